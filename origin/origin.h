/*
 * origin/origin.h - what the files of pibl-origin share: its limits, its
 * config (g_cfg, set once at start-up, read everywhere), the connection and
 * request structures, and the functions one file offers the others. Return
 * convention: 0 (or a count) on success, -1 on error, unless a function
 * says otherwise.
 */
#ifndef PIBL_ORIGIN_H
#define PIBL_ORIGIN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct iovec;

#define MAX_HEAD_BYTES      65536                /* request line + headers (431) */
#define MAX_HEADERS         128                  /* header lines per request (431) */
#define MAX_LINE_BYTES      4096                 /* chunk-size line or trailer line */
#define MAX_TRAILER_BYTES   65536                /* all trailer lines of one body */
#define MAX_CHUNK_SIZE      (1ULL << 60)         /* refuse absurd chunk sizes */
#define IO_BUF_BYTES        65536                /* output buffer and body relay */
#define RESP_HEAD_BYTES     4096                 /* one response head */
#define EXTRA_HEAD_BYTES    2048                 /* route-specific response headers */
#define ECHO_MAX_BODY       (1024 * 1024)        /* /_echo returns bodies up to this */
#define MAX_CONNECTIONS     4096                 /* concurrent connections (503) */
#define THREAD_STACK_BYTES  (256 * 1024)         /* per connection thread */
#define IO_TIMEOUT_SEC      60                   /* socket silence before giving up */
#define LINGER_TIMEOUT_SEC  2                    /* draining a peer before close */
#define LINGER_MAX_BYTES    (1024 * 1024)        /* bytes read while lingering */
#define MAX_NAME_BYTES      128                  /* -n NAME */
#define MAX_PATH_BYTES      4096                 /* decoded URL path and file path */
#define MAX_PARAM_BYTES     1024                 /* one decoded query value */
#define MAX_GEN_BYTES       (1ULL << 40)         /* generated bodies (_bytes etc.) */
#define MAX_CHUNKS          1000000ULL           /* /_chunked n */
#define MAX_GEN_CHUNK       (16ULL * 1024 * 1024) /* /_chunked size */
#define MAX_SLOW_MS         600000ULL            /* /_slow ms */
#define MAX_AGE_LIMIT       1000000000ULL        /* /_cache max_age */
#define NO_MAX_AGE          (~0ULL)              /* /_cache without max_age */
#define LAST_MODIFIED_AGO   86400                /* /_cache lm=1: Last-Modified this long before start */
#define MAX_UPLOAD_TRIES    10000                /* upload-<n> names tried */
#define DEFAULT_GEN_BYTES   100                  /* size when a route gets none */
#define DEFAULT_CHUNKS      3                    /* /_chunked n default */
#define DEFAULT_CHUNK_BYTES 10                   /* /_chunked size default */
#define DEFAULT_SLOW_MS     1000                 /* /_slow ms default */
#define LISTEN_BACKLOG      512

struct origin_config {
    char name[MAX_NAME_BYTES];     /* X-Backend value and log prefix */
    const char *addr;              /* listen address literal */
    int port;                      /* port asked for, then the real one */
    const char *root;              /* static file root */
    const char *reqlog_path;       /* -l file, NULL when not logging */
    const char *upload_dir;        /* -u folder, NULL: uploads only counted */
};

struct str_view {
    const char *ptr;               /* not NUL-terminated */
    size_t len;
};

struct header {
    struct str_view name;
    struct str_view value;         /* surrounding whitespace trimmed */
};

enum body_kind { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };
enum chunk_state { CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER, CHUNK_DONE };

struct request {
    size_t head_len;               /* raw head bytes in conn.head */
    int line_ok;                   /* request line parsed: worth a log line */
    struct str_view method;
    struct str_view target;        /* as received */
    struct str_view path;          /* target path, origin-form, no query */
    struct str_view query;         /* after '?', may be empty */
    int minor;                     /* HTTP/1.minor */
    struct header headers[MAX_HEADERS];
    size_t n_headers;
    int is_head;                   /* HEAD: never send a body */
    int keep_alive;                /* keep the connection after the response */
    int expect_continue;           /* Expect: 100-continue */
    enum body_kind body;           /* how the request body is framed */
    enum chunk_state chunk;        /* where chunked decoding stands */
    unsigned long long body_left;  /* bytes left (length) or left in chunk */
    unsigned long long body_total; /* decoded body bytes read so far */
    int body_done;                 /* whole body consumed */
};

struct conn {
    int fd;                        /* client socket */
    char rbuf[MAX_HEAD_BYTES];     /* bytes read, not yet consumed */
    size_t r_start;                /* first unconsumed byte in rbuf */
    size_t r_end;                  /* end of valid bytes in rbuf */
    char head[MAX_HEAD_BYTES];     /* copy of the current request head */
    char out[IO_BUF_BYTES];        /* response bytes not yet sent */
    size_t out_len;
    char io[IO_BUF_BYTES];         /* scratch for bodies */
    struct request rq;             /* the request being served */
};

extern struct origin_config g_cfg;                   /* set once at start-up (origin.cpp) */

/* Start-up, before the first connection: the digits of generated bodies. */
void io_init(void);

/* Start-up, before the first connection: /_cache's Last-Modified. */
void routes_init(void);

/* ---------------------------------------------------------------- socket I/O (io.cpp) */

/*
 * Send all len bytes on a socket. Retries EINTR, finishes partial sends,
 * never raises SIGPIPE. Returns 0, or -1 on error or send timeout. Blocks.
 */
int send_all(int fd, const void *buf, size_t len);

/*
 * Write all bytes described by iov[0..n_iov) to fd, in one writev() when the
 * kernel takes it whole (so O_APPEND lines from several processes do not
 * interleave). Modifies iov. Returns 0 or -1.
 */
int writev_all(int fd, struct iovec *iov, int n_iov);

/* Send what is buffered in c->out. Returns 0 or -1 (connection is dead). */
int out_flush(struct conn *c);

/*
 * Queue len bytes for the client, sending when the buffer fills; large
 * writes on an empty buffer go straight to the socket. Returns 0 or -1.
 */
int out_put(struct conn *c, const void *buf, size_t len);

/*
 * Queue count bytes of the repeating "0123456789" pattern, starting at body
 * offset offset (byte i of a generated body is '0' + i % 10). Returns 0/-1.
 */
int out_digits(struct conn *c, unsigned long long offset, unsigned long long count);

/*
 * Receive into buf, retrying EINTR. Returns the byte count, 0 at EOF, -1 on
 * error or IO_TIMEOUT_SEC of silence (SO_RCVTIMEO). Blocks.
 */
ssize_t recv_retry(int fd, void *buf, size_t cap);

/*
 * Read up to cap body bytes: buffered bytes first, else straight from the
 * socket. Returns the count, 0 at EOF, -1 on error.
 */
ssize_t conn_read_some(struct conn *c, char *buf, size_t cap);

/*
 * Consume one line ending in LF (CR before it dropped) of at most
 * MAX_LINE_BYTES. *line points into c->rbuf and stays valid until the next
 * read. Returns 0, or -1 on EOF, error or an over-long line.
 */
int conn_read_line(struct conn *c, struct str_view *line);

/*
 * Read one request head into c->head (bytes after it stay buffered for the
 * body or the next pipelined request). Returns 1 with *head_len set, 0 on a
 * clean close between requests, -1 on error/timeout/EOF mid-head, -2 when
 * the head exceeds MAX_HEAD_BYTES. Blocks.
 */
int read_head(struct conn *c, size_t *head_len);

/* ---------------------------------------------------------------- the request parser (request.cpp) */

/* 1 if v is a non-empty token, else 0. */
int is_token(struct str_view v);

/* 1 if v equals s exactly, else 0. */
int view_eq(struct str_view v, const char *s);

/* v with leading and trailing spaces and tabs removed. */
struct str_view view_trim(struct str_view v);

/*
 * Parse an unsigned decimal of 1..19 digits, no sign or spaces, at most max.
 * Returns 0 with *out set, or -1.
 */
int parse_u64(struct str_view v, unsigned long long max, unsigned long long *out);

/* The value of the first header called name, or an empty view with ptr NULL. */
struct str_view header_get(const struct request *rq, const char *name);

/*
 * 1 if some comma-separated element of some header called name equals token
 * (case-insensitive), else 0. Used for Connection and Transfer-Encoding.
 */
int header_has_token(const struct request *rq, const char *name, const char *token);

/*
 * Parse the raw head in head[0..len) into rq (views point into head).
 * Returns 0, or the HTTP status to answer with: 400, 431, 501 or 505.
 * rq->line_ok says whether method and target are usable even on error.
 */
int parse_head(struct request *rq, const char *head, size_t len);

/*
 * Read the next piece of the request body into buf (decoded). Returns a
 * count > 0, 0 when the body is complete, -1 on a malformed body or a dead
 * connection (the connection must then be closed). Blocks.
 */
ssize_t body_read(struct conn *c, char *buf, size_t cap);

/* Read and drop the rest of the request body. Returns 0 or -1. */
int body_drain(struct conn *c);

/*
 * Percent-decode src into dst (NUL-terminated), '+' as space when
 * plus_space. Returns the decoded length, or -1 on a bad escape, an encoded
 * NUL or a result that does not fit in cap.
 */
long url_decode(struct str_view src, char *dst, size_t cap, int plus_space);

/*
 * Find key in the query ("a=1&b=2") and decode its value into out.
 * Returns the value length, -1 when absent, -2 when malformed or too long.
 */
long query_get(const struct request *rq, const char *key, char *out, size_t cap);

/*
 * Read the number key from the query: def when absent, else a decimal in
 * 0..max. Returns 0 with *out set, or -1 (answer 400).
 */
int query_u64(const struct request *rq, const char *key, unsigned long long def,
                     unsigned long long max, unsigned long long *out);

/*
 * Read a printable string parameter (visible ASCII and spaces) for use in
 * a response header. Returns its length, -1 when absent, -2 when unusable.
 */
long query_header_value(const struct request *rq, const char *key, char *out, size_t cap);

/* ---------------------------------------------------------------- answer heads (reply.cpp) */

/* Format t as an IMF-fixdate (RFC 9110 5.6.7) into buf. Returns 0 or -1. */
int http_date(time_t t, char *buf, size_t cap);

/*
 * Queue a response head: status line, Date, Server, X-Backend, the
 * route's extra lines (each ending CRLF, may be ""), framing, Connection.
 * content_length < 0 sends no Content-Length; chunked adds
 * Transfer-Encoding. Returns 0 or -1 (caller closes).
 */
int send_head(struct conn *c, int status, const char *extra, long long content_length, int chunked);

/*
 * Send an interim 1xx response right away (100 Continue, 103 Early Hints).
 * Never sent to HTTP/1.0 clients (RFC 9110 15.2). Returns 0 or -1.
 */
int send_interim(struct conn *c, int status, const char *extra);

/*
 * Send a whole response with a small in-memory body (not sent for HEAD).
 * 1xx, 204 and 304 get neither Content-Length nor body. Returns 0 or -1.
 */
int send_simple(struct conn *c, int status, const char *extra, const char *body, size_t body_len);

/*
 * Answer with a short text/plain error body. 4xx/5xx framing errors must
 * close, so callers clear keep_alive first when needed. Returns 0 or -1.
 */
int send_error(struct conn *c, int status);

/* ---------------------------------------------------------------- static files (files.cpp) */

/*
 * 1 if the If-None-Match list (or "*") holds etag, weak comparison
 * (RFC 9110 13.1.2), else 0.
 */
int etag_matches(struct str_view list, const char *etag);

/*
 * 1 if the request's validators say the client's copy is current: an
 * If-None-Match that matches, or (without one) an If-Modified-Since at or
 * after mtime (RFC 9110 13.2.2). Else 0.
 */
int not_modified(const struct request *rq, const char *etag, time_t mtime);

/*
 * GET|HEAD of a file under ROOT: 200 with Content-Type, Last-Modified and
 * ETag, 304 when the client's validators match, 403 for "..", 404, 405.
 * Returns 0 (keep going if rq allows) or -1 (close).
 */
int serve_static(struct conn *c);

/* ---------------------------------------------------------------- test routes (routes.cpp) */

/*
 * /_echo, any method: 200 text/plain with the raw request head (request
 * line, headers exactly as received, blank line) then the body bytes. Bodies
 * over ECHO_MAX_BODY are only counted ("body-bytes=N not-echoed").
 * X-Body-Bytes carries the decoded body size. Returns 0 or -1.
 */
int serve_echo(struct conn *c);

/*
 * POST|PUT /_upload: store the decoded body in UPLOAD_DIR/upload-<n> and
 * answer "bytes=N file=PATH\n". Without -u the body is counted and
 * dropped ("file=-"). Returns 0 or -1.
 */
int serve_upload(struct conn *c);

/*
 * /_chunked?n=N&size=S: N chunks of S bytes of the digit pattern
 * (continuous across chunks, so the body equals /_bytes?size=N*S). HTTP/1.0
 * clients cannot read chunked: they get a close-delimited body. Returns 0
 * or -1 (close).
 */
int serve_chunked(struct conn *c);

/*
 * /_close?size=S: 200 without Content-Length, Connection: close, S digit
 * bytes, then close (close-delimited body, RFC 9112 6.3 item 8).
 * Always returns -1 so the caller closes.
 */
int serve_close(struct conn *c);

/*
 * /_status/NNN: answer with status NNN (200..599); 204 and 304 without a
 * body, others with "status NNN\n". Returns 0 or -1.
 */
int serve_status(struct conn *c);

/* /_slow?ms=N: sleep N ms (up to MAX_SLOW_MS), then 200 "slow\n". */
int serve_slow(struct conn *c);

/*
 * /_whoami: 200 text/plain "NAME\n" with Cache-Control: no-store, so no cache
 * keeps it and every request shows the replica that round robin picked (the
 * demo page www/index.html asks it). Returns 0 or -1.
 */
int serve_whoami(struct conn *c);

/*
 * /_abort?size=S&after=A: promise Content-Length S, send A bytes (A <= S,
 * default S/2), then close: a truncated response on purpose. Always -1.
 */
int serve_abort(struct conn *c);

/* /_1xx: 103 Early Hints with a Link header, then 200 "after-1xx\n". */
int serve_1xx(struct conn *c);

/* /_bytes?size=S: 200 with S digit bytes and Content-Length. */
int serve_bytes(struct conn *c);

/*
 * /_cache?max_age=N&etag=X&cc=STRING&cookie=1&vary=NAME&expires=N&lm=1: 200
 * with the fields of cache_headers and the body "cache-body NAME n=<count>"
 * (count of /_cache requests this process saw, so refetches differ) plus
 * " vary=<the request's NAME value>" (at most MAX_PARAM_BYTES of it; "*"
 * for vary=*), then "\n". 304 when If-None-Match matches the etag, or,
 * without If-None-Match, when lm=1 and If-Modified-Since is at or after
 * the Last-Modified sent (RFC 9110 13.2.2). Returns 0 or -1.
 */
int serve_cache(struct conn *c);

/* OPTIONS *: 200 listing the methods this server knows. */
int serve_options(struct conn *c);

/* ---------------------------------------------------------------- WebSocket and event stream (ws.cpp) */

/*
 * /_ws: a WebSocket echo (RFC 6455). The opening handshake is checked
 * (GET, Upgrade: websocket, Connection: upgrade, Sec-WebSocket-Version 13,
 * a 16-byte Sec-WebSocket-Key) and answered 101 with Sec-WebSocket-Accept;
 * anything else gets 426 or 400. The first message names the replica
 * ("hello from NAME"); then every text or binary frame comes back as it
 * came (fragments too), pings get pongs, a close is answered and ends it.
 * Frames from the client must be masked; payloads over ECHO_MAX_BODY end it
 * with close code 1009. With ?after_eof=1, a client that half-closes gets
 * one more message ("bye from NAME") before the server closes: a test of
 * half-close through a proxy. Always returns -1 (the connection is done).
 */
int serve_ws(struct conn *c);

/*
 * /_sse?n=N&ms=M: server-sent events (text/event-stream, no length: chunked
 * for HTTP/1.1, close-delimited for 1.0), N events ("data: event I from
 * NAME"), each written and flushed M ms after the one before: a test that a
 * proxy passes a stream on as it comes. Returns 0 or -1.
 */
int serve_sse(struct conn *c);

#endif
