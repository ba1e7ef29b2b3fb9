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

#define PIBL_NAME            "pibl"
#define PIBL_VERSION         "1.0"

/* Compile-time limits. Runtime limits are config keys (struct pibl_config). */
#define MAX_BACKENDS         64       /* backend lines in a config */
#define MAX_HEADERS          100      /* header fields in one head */
#define MAX_CONN_TOKENS      16       /* names listed in one Connection header */
#define MAX_CONFIG_LINE      1024     /* bytes in one config line */
#define MAX_TRAILER_BYTES    8192     /* chunked trailer section we read and drop */
#define RELAY_BUF_BYTES      65536    /* body relay buffer per connection */
#define MAX_HOST_NAME        256      /* backend host name */
#define THREAD_STACK_BYTES   (256 * 1024)
#define LOG_LINE_MAX         4096     /* one log line, truncated past this */

/* ---------------------------------------------------------------- pibl.cpp */

/* The configuration: read once at start-up, never changed while serving. */
struct pibl_config {
    char listen_addr[64];          /* address to bind, IPv4 or IPv6 literal */
    int port;                      /* listening port, 0 = any free port */
    int n_backends;                /* backend lines seen */
    char log_file[PATH_MAX];       /* exchange log, appended */
    int log_headers;               /* 1: also log whole header blocks */
    char cache_dir[PATH_MAX];      /* cache folder, relative to the cwd */
    int connect_timeout;           /* s, connect() to a backend */
    int backend_timeout;           /* s, silence from a backend -> 504 */
    int client_timeout;            /* s, whole request head; gap in a body */
    int keepalive_timeout;         /* s, idle client connection */
    int down_time;                 /* s, a failed backend is skipped */
    int max_connections;           /* concurrent client connections */
    int max_header_bytes;          /* request head cap -> 431 */
    int max_uri_bytes;             /* request target cap -> 414 */
    long long max_body_bytes;      /* request body cap -> 413, 0 = none */
    int upstream_keepalive;        /* 1: pool idle backend connections */
    int shutdown_timeout;          /* s, grace for in-flight exchanges */
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

/* ---------------------------------------------------------------- rr.cpp */

/*
 * Resolve "host:port" or "[v6]:port" with getaddrinfo and append it to the
 * backend table. Start-up only. Returns 0, or -1 with the reason in err.
 */
int rr_add(const char *spec, char *err, size_t err_len);

/* Forget every backend (tests and config re-reads at start-up). */
void rr_reset(void);

/* Number of backends in the table. */
int rr_count(void);

/* Set how long a failed backend is skipped, in seconds. */
void rr_set_down_time(int seconds);

/*
 * Pick the next backend in strict round robin, skipping those marked down
 * and those already in the tried mask (bit i = backend i). Returns the index,
 * or -1 when every backend is down or tried. Never blocks.
 */
int rr_next(uint64_t tried);

/* Mark backend i down for the configured down time / record a success. */
void rr_mark_down(int i);
void rr_mark_up(int i);

/* 1 if backend i is currently marked down. */
int rr_is_down(int i);

/* Address of backend i for connect(), and its printable "host:port" name. */
const struct sockaddr *rr_addr(int i, socklen_t *len);
const char *rr_name(int i);

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

/* Queue a multi-line block (header dumps) as one unit, each line indented. */
void log_block(const char *title, const char *text, size_t text_len);

/* Current UTC time as "2026-11-27T02:30:04.123Z" into buf (>= 32 bytes). */
void log_timestamp(char *buf, size_t len);

/* Flush what is queued and stop the writer thread. */
void log_close(void);

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
int http_init(const struct pibl_config *cfg, int n_fds);

/*
 * Serve one client connection until it closes: read requests, forward them,
 * relay the answers. Blocks; closes fd before returning.
 */
void http_serve(int fd, const struct sockaddr_storage *peer);

/* Wake every idle client connection so it closes (graceful stop). */
void http_close_idle(void);

/* Send a short error answer on a fresh connection and close it (accept path). */
void http_reject(int fd, int status, const char *why);

/* ---------------------------------------------------------------- cache.cpp */

/* Cache status of one exchange, for the log line. */
enum cache_status { CACHE_NONE, CACHE_HIT, CACHE_MISS, CACHE_EXPIRED, CACHE_STALE, CACHE_BYPASS };

/* Name of a cache status for the log ("-", "HIT", ...). */
const char *cache_status_name(int status);

/* Prepare the cache folder; ttl 0 turns the cache off. Returns 0 or -1. */
int cache_init(const char *dir, long ttl);

#endif
