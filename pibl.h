/*
 * pibl.h - the one header of PIBL (Proxy Inverso + Balanceador de Carga).
 *
 * One section per source file, each listing only what that file exports.
 * Every compile-time limit lives here so that the caps a peer can reach are
 * visible in one place.
 */
#ifndef PIBL_H
#define PIBL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <limits.h>
#include <time.h>

#define PIBL_NAME            "pibl"
#define PIBL_VERSION         "1.0"

/* Compile-time limits. Runtime limits are config keys (struct pibl_config). */
#define MAX_BACKENDS         64       /* backends in a config, and slots over reloads */
#define MAX_WEIGHT           100      /* backend weight=N */
#define MAX_BACKEND_ADDRS    4        /* addresses kept per backend name */
#define MAX_HEADERS          100      /* header fields in one head */
#define MAX_CONN_TOKENS      16       /* names listed in one Connection header */
#define MAX_CONFIG_LINE      1024     /* bytes in one config line */
#define MAX_TRAILER_BYTES    8192     /* chunked trailer section we read and drop */
#define RELAY_BUF_BYTES      65536    /* body relay buffer per connection */
#define MAX_HOST_NAME        256      /* backend host name */
#define THREAD_STACK_BYTES   (256 * 1024)
#define LOG_LINE_MAX         4096     /* one log line, truncated past this */
#define MAX_CACHE_KEY        4096     /* longer keys are not cached */
#define MAX_VARY_BYTES       1024     /* request values an entry varies on */

/* ---------------------------------------------------------------- pibl.cpp */

/* One "backend = host:port [weight=N]" line, resolved. */
struct backend_conf {
    char name[MAX_HOST_NAME + 8];  /* "host:port" as written */
    int weight;                    /* 1..MAX_WEIGHT */
    int n_addrs;                   /* getaddrinfo answers kept, in its order */
    struct sockaddr_storage addr[MAX_BACKEND_ADDRS];
    socklen_t addr_len[MAX_BACKEND_ADDRS];
};

/*
 * The configuration. Immutable once loaded: a reload (SIGHUP) builds a new
 * one and swaps the pointer, so a request sees one config from start to end.
 */
struct pibl_config {
    char listen_addr[64];          /* address to bind, IPv4 or IPv6 literal */
    int port;                      /* listening port, 0 = any free port */
    int n_backends;                /* backend lines seen */
    struct backend_conf backends[MAX_BACKENDS];
    char log_file[PATH_MAX];       /* exchange log, appended */
    int log_headers;               /* 1: also log whole header blocks */
    char cache_dir[PATH_MAX];      /* cache folder, relative to the cwd */
    int connect_timeout;           /* s, connect() to a backend */
    int backend_timeout;           /* s, silence from a backend -> 504 */
    int client_timeout;            /* s, whole request head; gap in a body */
    int client_min_rate;           /* bytes/s a request body must average
                                      after its first client_timeout s; 0 = off */
    int keepalive_timeout;         /* s, idle client connection */
    int down_time;                 /* s, a failed backend is skipped */
    int max_connections;           /* concurrent client connections */
    int max_header_bytes;          /* request head cap -> 431 */
    int max_uri_bytes;             /* request target cap -> 414 */
    long long max_body_bytes;      /* request body cap -> 413, 0 = none */
    int upstream_keepalive;        /* 1: pool idle backend connections */
    int shutdown_timeout;          /* s, grace for in-flight exchanges */
    int cache_heuristic;           /* 1: reuse answers without freshness info */
    long long cache_max_bytes;     /* whole cache, LRU eviction past it */
    long long cache_max_object;    /* one entry */
    int cache_stale_if_error;      /* s past expiry served when backends fail */
    int cache_lock_timeout;        /* s a collapsed request waits */
    char purge_allow[512];         /* client IPs allowed to PURGE */
    char admin_listen[64];         /* status page address */
    int admin_port;                /* status page port; -1 = no status page */
    char health_check[256];        /* path probed by health checks; "" = none */
    int health_interval;           /* s between probes */
    int health_fall;               /* failed probes that take a backend out */
    int health_rise;               /* good probes that put it back */
    long ttl;                      /* cache TTL from the command line */
};

/*
 * Parse the config file at path into cfg (defaults first, then each line).
 * Backends are handed to rr_add() as they are read. Returns 0 on success,
 * -1 with a message "FILE:LINE: what" in err on the first error.
 */
int pibl_config_load(const char *path, struct pibl_config *cfg, char *err, size_t err_len);

/* Set every key of cfg to its documented default (no backends). */
void pibl_config_defaults(struct pibl_config *cfg);

/* The live config (replaced whole by a reload; never freed). */
const struct pibl_config *pibl_config_now(void);

/* Client connections open now, and when PIBL started. */
int pibl_open_connections(void);

/* A client connection was closed (http.cpp calls it once per accepted one). */
void pibl_conn_closed(void);
time_t pibl_start_time(void);

/* Start a detached helper thread (default stack). Returns 0 or -1. */
int pibl_spawn(void *(*fn)(void *), void *arg);

/* Monotonic clock in microseconds. */
int64_t pibl_now_us(void);

/* Write all of buf to a file or pipe, retrying EINTR and short writes.
 * Returns 0, or -1 with errno set. (Sockets use http.cpp's writev_all.) */
int pibl_write_all(int fd, const char *buf, size_t len);

/* ---------------------------------------------------------------- rr.cpp */

/* Counters of one backend, for the status page. */
struct rr_stats {
    const char *name;
    int weight;
    int passive_down;              /* skipped after a failure, for down_time */
    int health_down;               /* taken out by health checks */
    uint64_t requests;             /* exchanges sent to it */
    uint64_t failures;             /* of those, failed */
    const char *last_error;        /* NULL if none */
    double avg_ms;                 /* latency to the answer head */
    double p99_ms;
};

/*
 * Resolve "host:port" or "[v6]:port" with getaddrinfo into out.
 * Returns 0, or -1 with the reason in err.
 */
int rr_resolve(const char *spec, int weight, struct backend_conf *out, char *err, size_t err_len);

/*
 * Make cfg's backend list the live rotation (start-up and reload). Slots
 * leaving the rotation are listed in removed[] (the caller drops their idle
 * connections). Returns 0, or -1 when no slot is free.
 */
int rr_configure(const struct pibl_config *cfg, int *removed, int *n_removed);

/* Number of backends in the rotation. */
int rr_count(void);

/* The rotation's slots in config order; returns how many. */
int rr_active_slots(int *slots, int max);

/*
 * Pick the next backend by smooth weighted round robin (strict round robin
 * when weights are equal), skipping those marked down and those in the
 * tried mask (bit i = slot i). Returns the slot, or -1 when none is left.
 * Never blocks on I/O.
 */
int rr_next(uint64_t tried);

/* Passive marks: down for down_time after a failure / up after a success. */
void rr_mark_down(int i);
void rr_mark_up(int i);

/* Active mark from health checks (1 = out of rotation). */
void rr_set_health(int i, int down);

/* Backends in the rotation other than i that are not marked down. */
int rr_others_up(int i);

/* 1 if slot i is marked down (either way). */
int rr_is_down(int i);

/* 1 if slot i is in the current config. */
int rr_is_active(int i);

/* Address k of slot i for connect() (NULL past the last), and its
 * printable "host:port" name. */
const struct sockaddr *rr_addr(int i, int k, socklen_t *len);
const char *rr_name(int i);

/* Count one exchange with slot i: ok or failed (with a static reason). */
void rr_record(int i, int ok, int64_t latency_us, const char *error);

/* Note a failure seen outside a request (a health probe): last error only. */
void rr_set_error(int i, const char *error);

/* Read slot i's counters. */
void rr_stats(int i, struct rr_stats *st);

/* ---------------------------------------------------------------- log.cpp */

/*
 * Open the log file (append) and start the writer thread. Lines also go to
 * standard output. A log file that cannot be opened is a warning on stderr,
 * not an error: PIBL keeps serving and logs to standard output alone.
 * Returns 0, or -1 when the writer thread cannot start.
 */
int log_open(const char *path);

/*
 * Queue one line (a newline is added). Never does I/O itself; waits only when
 * the queue is full. Thread-safe; keeps errno.
 */
void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * From log_batch_begin() on, this thread's lines wait in a buffer of its own
 * until log_flush() (or until it fills), so that an event loop takes the
 * queue lock once per turn rather than once per line: two loops taking it
 * per line made each other wait, and a loop that waits holds up all its
 * clients. The thread must call log_flush() before it blocks, and before
 * anything that waits for its lines (a connection it closes may be the one
 * a graceful stop waits for).
 */
void log_batch_begin(void);
void log_flush(void);

/* Queue one line already formatted (len bytes, no newline); cut says it
 * was cut short, and it then ends in "...", as log_line() does. */
void log_text(const char *text, size_t len, int cut);

/* Queue a multi-line block (header dumps) as one unit, each line indented. */
void log_block(const char *title, const char *text, size_t text_len);

/* Current UTC time as "2026-11-27T02:30:04.123Z" into buf (>= 32 bytes). */
void log_timestamp(char *buf, size_t len);

/* Flush what is queued and stop the writer thread. */
void log_close(void);

/* Reopen the log file at path (SIGUSR1 after logrotate, or a reload that
 * names another file); done by the writer thread between two writes. */
void log_reopen(const char *path);

/* ---------------------------------------------------------------- http.cpp */

/* A header field: views into the head buffer, never NUL-terminated. */
struct http_header {
    const char *name;
    size_t name_len;
    const char *value;             /* without leading and trailing OWS */
    size_t value_len;
};

/* A parsed request head; every pointer points into the caller's buffer. */
struct http_request {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor_version;             /* 0 or 1 */
    struct http_header headers[MAX_HEADERS];
    int n_headers;
};

/* A parsed response head. */
struct http_response {
    int minor_version;
    int status;
    const char *reason;
    size_t reason_len;
    struct http_header headers[MAX_HEADERS];
    int n_headers;
};

/*
 * Parse a complete request head in buf[0..len) (len includes the final
 * CRLF CRLF). Leading empty lines are skipped (RFC 9112 2.2).
 * Returns 0 on success; on error a status code for the client:
 * 400 malformed, 414 target over max_uri, 431 too many fields, 505 version.
 */
int http_parse_request(const char *buf, size_t len, size_t max_uri, struct http_request *req);

/* Parse a complete response head. Returns 0, or -1 when malformed. */
int http_parse_response(const char *buf, size_t len, struct http_response *resp);

/*
 * Find the end of a head in buf[0..len), scanning from *scan (updated, so
 * each call looks only at new bytes). Returns the head length including the
 * blank line, -2 when incomplete, -1 on a bare LF or a NUL (RFC 9112 2.2).
 */
long http_find_head_end(const char *buf, size_t len, size_t *scan);

/* Streaming chunked-body decoder (RFC 9112 7.1). */
struct http_chunked {
    int state;                     /* private */
    uint64_t remaining;            /* data bytes left in the current chunk */
    size_t n_digits;               /* hex digits read of the size */
    size_t trailer_bytes;          /* trailer bytes read, capped */
    size_t line_bytes;             /* bytes in the current trailer line */
};

void http_chunked_init(struct http_chunked *ck);

/*
 * Consume bytes of a chunked body from p[0..len). Returns the number of
 * bytes consumed, or -1 when malformed. When *data_len is set non-zero the
 * first *data_len consumed bytes (starting at p) are body data; otherwise
 * everything consumed was framing. http_chunked_done() tells the end.
 */
long http_chunked_step(struct http_chunked *ck, const char *p, size_t len, size_t *data_len);
int http_chunked_done(const struct http_chunked *ck);

/*
 * Parse a Content-Length value: digits only, no sign, no overflow.
 * Returns the value, or -1 when invalid.
 */
long long http_parse_content_length(const char *v, size_t len);

/* Case-insensitive comparison of a header name with a NUL-terminated name. */
int http_name_is(const char *name, size_t name_len, const char *want);

/* Set up connection bookkeeping for up to n_fds descriptors. Start-up only. */
int http_init(int n_fds);

/*
 * Open a blocking TCP connection to backend slot b within connect_ms,
 * trying its addresses in turn while they are refused or unreachable (a
 * name such as localhost may give ::1 before 127.0.0.1). Returns the fd, or
 * -1 with errno (ETIMEDOUT when an address did not answer in time).
 */
int http_connect_backend(int b, int connect_ms);

/* Close the idle pooled connections to backend slot b (it left the config). */
void http_pool_flush(int b);

/* Exchanges answered since start. */
uint64_t http_requests_total(void);

/*
 * Take a new client connection: an event loop serves it from now on and
 * closes fd in the end (then calls pibl_conn_closed). Returns 0, or -1 when
 * out of memory (fd is left to the caller).
 */
int http_accept(int fd, const struct sockaddr_storage *peer);

/* Wake every idle client connection so it closes (graceful stop). */
void http_close_idle(void);

/* Send a short error answer on a fresh connection and close it (accept path). */
void http_reject(int fd, int status, const char *why);

/* ---------------------------------------------------------------- cache.cpp */

/* Cache status of one exchange, for the log line and X-Cache. */
enum cache_status { CACHE_NONE, CACHE_HIT, CACHE_MISS, CACHE_EXPIRED, CACHE_STALE, CACHE_BYPASS };

/* A stored entry found by cache_lookup, open for reading. */
struct cache_entry {
    int fd;                        /* -1: none */
    int slot;                      /* private: open-entry slot, -1 = own fd */
    const char *head;              /* private: stored head in memory, or NULL */
    const char *body;              /* the body in memory (small entries), or NULL */
    uint64_t hash;
    long lifetime;                 /* s, capped by the launch TTL */
    long age;                      /* s since stored or revalidated (mtime) */
    int fresh;                     /* age < lifetime */
    int status;
    off_t head_off;                /* stored head: file offset and length */
    size_t head_len;
    off_t body_off;                /* body: file offset and length */
    uint64_t body_len;
    char vary[MAX_VARY_BYTES];     /* "name=value\n" lines it was stored for */
};

struct cache_writer;

/* Name of a cache status ("-", "HIT", ...). */
const char *cache_status_name(int status);

/*
 * Prepare the cache folder (made if missing), delete temp files a crash
 * left, index the entries and start the eviction thread. TTL 0: cache off.
 * Returns 0, or -1 (errno set) when the folder is unusable: cache off.
 */
int cache_init(const struct pibl_config *cfg);

/* 1 when the cache is on. */
int cache_enabled(void);

/* Launch TTL in seconds. */
long cache_ttl(void);

/* Build the key "http://host/target" (host lower-cased) into buf.
 * Returns its length, or -1 when it is longer than MAX_CACHE_KEY. */
int cache_key(char *buf, size_t cap, const char *host, size_t host_len, const char *target,
    size_t target_len);

/*
 * Open the entry for key. Returns 1 with e filled (fresh or not; the caller
 * must cache_release it), 0 when there is none. A damaged entry is deleted
 * and reported as none. Blocks on disk only.
 */
int cache_lookup(const char *key, size_t key_len, struct cache_entry *e);

/* Close an entry from cache_lookup (safe on an empty one). */
void cache_release(struct cache_entry *e);

/* Read the stored head into buf. Returns 0, or -1 if it does not fit. */
int cache_read_head(const struct cache_entry *e, char *buf, size_t cap);

/* Mark the entry fresh again (mtime = now) after a 304 from the origin. */
void cache_touch(const struct cache_entry *e);

/* Delete the entry for key. Returns 1 if one was deleted, 0 if none. */
int cache_remove(const char *key, size_t key_len);

/*
 * Start storing an answer: a temp file gets the meta block and head. vary
 * holds "name=value\n" lines (or ""). Returns NULL when it cannot store
 * (logged once); the caller then just serves without storing.
 */
struct cache_writer *cache_store_begin(const char *key, size_t key_len, int status, long lifetime,
    const char *vary, const char *head, size_t head_len);

/* Append body bytes. Returns 0, or -1 after abandoning the entry (too big,
 * disk full): the writer is freed and must not be used again. */
int cache_store_write(struct cache_writer *w, const char *data, size_t len);

/* Make the entry visible (rename). Frees w. Returns 0 or -1. */
int cache_store_commit(struct cache_writer *w);

/* Drop an unfinished entry. Frees w. Safe on NULL. */
void cache_store_abort(struct cache_writer *w);

/* Counters for the status page. */
struct cache_stats {
    uint64_t entries;
    uint64_t bytes;
    uint64_t hits;                 /* HIT and STALE answers */
    uint64_t lookups;              /* answers with any cache status but BYPASS */
};

/* Count one answer with this cache status. */
void cache_note(int status);

/* Read the counters. */
void cache_get_stats(struct cache_stats *st);

/*
 * Request collapsing. Returns 1 when the caller is the one to fetch key
 * (it must cache_unlock it), 0 after waiting for another fetch of the same
 * key to finish (look up again), -1 after timeout_s of waiting.
 */
int cache_lock(const char *key, size_t key_len, int timeout_s);
void cache_unlock(const char *key, size_t key_len);

/* ---------------------------------------------------------------- admin.cpp */

/* Serve one status page client (HTML /, JSON /status.json, /metrics); closes fd. */
void admin_serve(int fd);

/* Called about once a second by the select() loop: samples the request rate. */
void admin_tick(void);

/* ---------------------------------------------------------------- health.cpp */

/* Start the active health check thread (it idles while health_check is unset). */
int health_start(void);

#endif
