/*
 * origin/origin.cpp - pibl-origin, the demo and test web server behind PIBL.
 * It is not part of the proxy: the deployment runs nginx on the web servers,
 * and the tests, the benchmark and scripts/run-local.sh run this instead.
 *
 * It keeps its own HTTP parser on purpose. A test origin that shared PIBL's
 * http.cpp would share its bugs, and every framing test would then check the
 * parser against itself; this one is written separately and kept strict.
 *
 * It serves the files under ROOT (GET and HEAD, index.html for directories,
 * Content-Type by extension, Last-Modified, ETag, 304 on If-None-Match or
 * If-Modified-Since) and a set of test routes under "/_" that produce odd
 * framings on demand: chunked bodies, close-delimited bodies, aborted bodies,
 * interim 1xx responses, chosen status codes, slow answers, cacheable answers,
 * an echo of the request and an upload sink, a WebSocket echo and a stream of
 * server-sent events. Every response names the origin
 * in an X-Backend header, and -l appends one line per request to a log file
 * (plus the raw head to REQLOG.heads) so tests can count what reached which
 * origin.
 *
 * One detached thread per connection with a capped stack; HTTP/1.1 keep-alive
 * and pipelining; HTTP/1.0 clients are closed unless they ask for keep-alive.
 * Request bodies are framed by Content-Length or chunked (decoded, trailers
 * read and dropped); Transfer-Encoding wins over Content-Length (RFC 9112
 * 6.3) and such a connection is closed after the response.
 *
 * What it refuses: ".." path segments (403), encoded NUL (400), transfer
 * codings other than chunked (501), HTTP major versions other than 1 (505),
 * obs-fold and malformed header lines (400). It does not do ranges, TLS,
 * content negotiation or directory listings.
 *
 * Limits: MAX_HEAD_BYTES per request head (431), MAX_HEADERS header lines
 * (431), MAX_LINE_BYTES per chunk-size or trailer line, MAX_TRAILER_BYTES of
 * trailers, MAX_CONNECTIONS concurrent connections (503 past it), IO_TIMEOUT_SEC
 * of silence on a socket, ECHO_MAX_BODY bytes echoed back by /_echo. File and
 * generated bodies stream through fixed buffers (sendfile for files).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

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

static struct origin_config g_cfg;                   /* set once at start-up */
static int g_reqlog_fd = -1;                         /* -l file */
static int g_heads_fd = -1;                          /* -l file ".heads" */
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER; /* both log fds */
static std::atomic<unsigned long> g_cache_count(0);  /* /_cache requests */
static time_t g_last_modified;                       /* /_cache lm=1: a day before start-up */
static std::atomic<unsigned long> g_upload_count(0); /* upload-<n> names */
static std::atomic<int> g_n_conns(0);                /* live connections */
static volatile sig_atomic_t g_stop;                 /* SIGINT/SIGTERM seen */
static char g_digits[IO_BUF_BYTES + 10];             /* "0123456789" repeated */

/* ---------------------------------------------------------------- output */

/*
 * Send all len bytes on a socket. Retries EINTR, finishes partial sends,
 * never raises SIGPIPE. Returns 0, or -1 on error or send timeout. Blocks.
 */
static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = (const char *)buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Write all bytes described by iov[0..n_iov) to fd, in one writev() when the
 * kernel takes it whole (so O_APPEND lines from several processes do not
 * interleave). Modifies iov. Returns 0 or -1.
 */
static int writev_all(int fd, struct iovec *iov, int n_iov)
{
    while (n_iov > 0) {
        ssize_t n = writev(fd, iov, n_iov);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n_iov > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            n_iov--;
        }
        if (n_iov > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* Send what is buffered in c->out. Returns 0 or -1 (connection is dead). */
static int out_flush(struct conn *c)
{
    if (c->out_len == 0)
        return 0;
    size_t len = c->out_len;
    c->out_len = 0;
    return send_all(c->fd, c->out, len);
}

/*
 * Queue len bytes for the client, sending when the buffer fills; large
 * writes on an empty buffer go straight to the socket. Returns 0 or -1.
 */
static int out_put(struct conn *c, const void *buf, size_t len)
{
    if (c->out_len + len > sizeof c->out) {
        if (out_flush(c) == -1)
            return -1;
        if (len >= sizeof c->out)
            return send_all(c->fd, buf, len);
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    return 0;
}

/*
 * Queue count bytes of the repeating "0123456789" pattern, starting at body
 * offset offset (byte i of a generated body is '0' + i % 10). Returns 0/-1.
 */
static int out_digits(struct conn *c, unsigned long long offset, unsigned long long count)
{
    while (count > 0) {
        size_t n = count < IO_BUF_BYTES ? (size_t)count : IO_BUF_BYTES;
        if (out_put(c, g_digits + offset % 10, n) == -1)
            return -1;
        offset += n;
        count -= n;
    }
    return 0;
}

/* ---------------------------------------------------------------- input */

/*
 * Receive into buf, retrying EINTR. Returns the byte count, 0 at EOF, -1 on
 * error or IO_TIMEOUT_SEC of silence (SO_RCVTIMEO). Blocks.
 */
static ssize_t recv_retry(int fd, void *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n == -1 && errno == EINTR)
            continue;
        return n;
    }
}

/*
 * Read more bytes into c->rbuf, compacting it first when needed. Returns the
 * byte count, 0 at EOF, -1 on error, -2 when the buffer is full.
 */
static ssize_t conn_fill(struct conn *c)
{
    if (c->r_start == c->r_end) {
        c->r_start = 0;
        c->r_end = 0;
    } else if (c->r_end == sizeof c->rbuf && c->r_start > 0) {
        memmove(c->rbuf, c->rbuf + c->r_start, c->r_end - c->r_start);
        c->r_end -= c->r_start;
        c->r_start = 0;
    }
    if (c->r_end == sizeof c->rbuf)
        return -2;
    ssize_t n = recv_retry(c->fd, c->rbuf + c->r_end, sizeof c->rbuf - c->r_end);
    if (n > 0)
        c->r_end += (size_t)n;
    return n;
}

/*
 * Read up to cap body bytes: buffered bytes first, else straight from the
 * socket. Returns the count, 0 at EOF, -1 on error.
 */
static ssize_t conn_read_some(struct conn *c, char *buf, size_t cap)
{
    size_t avail = c->r_end - c->r_start;

    if (avail > 0) {
        size_t n = avail < cap ? avail : cap;
        memcpy(buf, c->rbuf + c->r_start, n);
        c->r_start += n;
        return (ssize_t)n;
    }
    return recv_retry(c->fd, buf, cap);
}

/*
 * Consume one line ending in LF (CR before it dropped) of at most
 * MAX_LINE_BYTES. *line points into c->rbuf and stays valid until the next
 * read. Returns 0, or -1 on EOF, error or an over-long line.
 */
static int conn_read_line(struct conn *c, struct str_view *line)
{
    for (;;) {
        const char *start = c->rbuf + c->r_start;
        size_t avail = c->r_end - c->r_start;
        const char *lf = (const char *)memchr(start, '\n', avail);
        if (lf != NULL) {
            size_t len = (size_t)(lf - start);
            c->r_start += len + 1;
            if (len > 0 && start[len - 1] == '\r')
                len--;
            line->ptr = start;
            line->len = len;
            return len > MAX_LINE_BYTES ? -1 : 0;
        }
        if (avail > MAX_LINE_BYTES || conn_fill(c) <= 0)
            return -1;
    }
}

/*
 * Find the end of a head in buf[0..len): the byte after the empty line.
 * *scan is where to resume, so each call only looks at new bytes (a
 * slow-sender defence). Returns the head length, or 0 if not complete yet.
 */
static size_t find_head_end(const char *buf, size_t len, size_t *scan)
{
    for (size_t i = *scan; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 >= len) {
            *scan = i;
            return 0;
        }
        if (buf[i + 1] == '\n')
            return i + 2;
        if (buf[i + 1] != '\r')
            continue;
        if (i + 2 >= len) {
            *scan = i;
            return 0;
        }
        if (buf[i + 2] == '\n')
            return i + 3;
    }
    *scan = len;
    return 0;
}

/* Drop empty lines before a request line (RFC 9112 2.2), one memmove. */
static void skip_leading_blank_lines(struct conn *c)
{
    size_t skip = 0;

    while (skip < c->r_end) {
        if (c->rbuf[skip] == '\n')
            skip += 1;
        else if (c->rbuf[skip] == '\r' && skip + 1 < c->r_end && c->rbuf[skip + 1] == '\n')
            skip += 2;
        else
            break;
    }
    if (skip > 0) {
        memmove(c->rbuf, c->rbuf + skip, c->r_end - skip);
        c->r_end -= skip;
    }
}

/*
 * Read one request head into c->head (bytes after it stay buffered for the
 * body or the next pipelined request). Returns 1 with *head_len set, 0 on a
 * clean close between requests, -1 on error/timeout/EOF mid-head, -2 when
 * the head exceeds MAX_HEAD_BYTES. Blocks.
 */
static int read_head(struct conn *c, size_t *head_len)
{
    size_t scan = 0;

    if (c->r_start > 0) {
        memmove(c->rbuf, c->rbuf + c->r_start, c->r_end - c->r_start);
        c->r_end -= c->r_start;
        c->r_start = 0;
    }
    for (;;) {
        size_t before = c->r_end;
        skip_leading_blank_lines(c);
        if (c->r_end != before)
            scan = 0;
        size_t end = find_head_end(c->rbuf, c->r_end, &scan);
        if (end > 0) {
            memcpy(c->head, c->rbuf, end);
            c->r_start = end;
            *head_len = end;
            return 1;
        }
        if (c->r_end == sizeof c->rbuf)
            return -2;
        ssize_t n = recv_retry(c->fd, c->rbuf + c->r_end, sizeof c->rbuf - c->r_end);
        if (n == 0)
            return c->r_end == 0 ? 0 : -1;
        if (n == -1)
            return -1;
        c->r_end += (size_t)n;
    }
}

/* ---------------------------------------------------------------- parsing */

/* 1 if ch may appear in a token (RFC 9110 5.6.2), else 0. */
static int is_tchar(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return 1;
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z')
        return 1;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* 1 if v is a non-empty token, else 0. */
static int is_token(struct str_view v)
{
    if (v.len == 0)
        return 0;
    for (size_t i = 0; i < v.len; i++)
        if (!is_tchar((unsigned char)v.ptr[i]))
            return 0;
    return 1;
}

/* 1 if v equals the NUL-terminated s ignoring ASCII case, else 0. */
static int view_ieq(struct str_view v, const char *s)
{
    return strlen(s) == v.len && strncasecmp(v.ptr, s, v.len) == 0;
}

/* 1 if v equals s exactly, else 0. */
static int view_eq(struct str_view v, const char *s)
{
    return strlen(s) == v.len && memcmp(v.ptr, s, v.len) == 0;
}

/* v with leading and trailing spaces and tabs removed. */
static struct str_view view_trim(struct str_view v)
{
    while (v.len > 0 && (v.ptr[0] == ' ' || v.ptr[0] == '\t')) {
        v.ptr++;
        v.len--;
    }
    while (v.len > 0 && (v.ptr[v.len - 1] == ' ' || v.ptr[v.len - 1] == '\t'))
        v.len--;
    return v;
}

/*
 * Parse an unsigned decimal of 1..19 digits, no sign or spaces, at most max.
 * Returns 0 with *out set, or -1.
 */
static int parse_u64(struct str_view v, unsigned long long max, unsigned long long *out)
{
    unsigned long long n = 0;

    if (v.len == 0 || v.len > 19)
        return -1;
    for (size_t i = 0; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return -1;
        n = n * 10 + (unsigned long long)(v.ptr[i] - '0');
    }
    if (n > max)
        return -1;
    *out = n;
    return 0;
}

/*
 * Cut the next line (LF-terminated, CR dropped) off [*p, end). Returns 0 and
 * advances *p, or -1 when no line is left.
 */
static int next_line(const char **p, const char *end, struct str_view *line)
{
    if (*p >= end)
        return -1;
    const char *lf = (const char *)memchr(*p, '\n', (size_t)(end - *p));
    const char *stop = lf != NULL ? lf : end;
    line->ptr = *p;
    line->len = (size_t)(stop - *p);
    if (line->len > 0 && line->ptr[line->len - 1] == '\r')
        line->len--;
    *p = lf != NULL ? lf + 1 : end;
    return 0;
}

/*
 * Split the path and query off the target: origin-form "/p?q", absolute-form
 * "http://host/p?q" (RFC 9112 3.2.2) or "*" for OPTIONS. Returns 0 or -1.
 */
static int split_target(struct request *rq)
{
    struct str_view t = rq->target;
    const char *q;

    if (t.len >= 7 && (strncasecmp(t.ptr, "http://", 7) == 0 ||
                       (t.len >= 8 && strncasecmp(t.ptr, "https://", 8) == 0))) {
        const char *auth = (const char *)memchr(t.ptr, ':', t.len) + 3;
        const char *slash = (const char *)memchr(auth, '/', (size_t)(t.ptr + t.len - auth));
        if (slash == NULL) {
            rq->path.ptr = "/";
            rq->path.len = 1;
            rq->query.ptr = "";
            rq->query.len = 0;
            return 0;
        }
        t.len -= (size_t)(slash - t.ptr);
        t.ptr = slash;
    } else if (view_eq(t, "*") && view_eq(rq->method, "OPTIONS")) {
        rq->path = t;
        rq->query.ptr = "";
        rq->query.len = 0;
        return 0;
    } else if (t.ptr[0] != '/') {
        return -1;
    }
    q = (const char *)memchr(t.ptr, '?', t.len);
    rq->path.ptr = t.ptr;
    rq->path.len = q != NULL ? (size_t)(q - t.ptr) : t.len;
    rq->query.ptr = q != NULL ? q + 1 : "";
    rq->query.len = q != NULL ? t.len - rq->path.len - 1 : 0;
    return 0;
}

/*
 * Parse "METHOD SP TARGET SP HTTP/d.d". Sets method, target, minor and
 * line_ok. Returns 0, 400 (malformed) or 505 (major version not 1).
 */
static int parse_request_line(struct request *rq, struct str_view line)
{
    const char *sp1 = (const char *)memchr(line.ptr, ' ', line.len);
    if (sp1 == NULL)
        return 400;
    const char *rest = sp1 + 1;
    size_t rest_len = line.len - (size_t)(rest - line.ptr);
    const char *sp2 = (const char *)memchr(rest, ' ', rest_len);
    if (sp2 == NULL)
        return 400;
    rq->method.ptr = line.ptr;
    rq->method.len = (size_t)(sp1 - line.ptr);
    rq->target.ptr = rest;
    rq->target.len = (size_t)(sp2 - rest);
    if (!is_token(rq->method) || rq->target.len == 0)
        return 400;
    for (size_t i = 0; i < rq->target.len; i++)
        if ((unsigned char)rq->target.ptr[i] <= 0x20 || (unsigned char)rq->target.ptr[i] >= 0x7f)
            return 400;
    rq->line_ok = 1;
    struct str_view version = { sp2 + 1, line.len - (size_t)(sp2 + 1 - line.ptr) };
    if (version.len != 8 || memcmp(version.ptr, "HTTP/", 5) != 0 || version.ptr[6] != '.' ||
        version.ptr[5] < '0' || version.ptr[5] > '9' || version.ptr[7] < '0' || version.ptr[7] > '9')
        return 400;
    if (version.ptr[5] != '1')
        return 505;
    rq->minor = version.ptr[7] - '0';
    return 0;
}

/*
 * Parse one "Name: value" line into rq->headers. Returns 0, 400 (malformed,
 * obs-fold, control bytes in the value) or 431 (too many headers).
 */
static int parse_header_line(struct request *rq, struct str_view line)
{
    if (line.ptr[0] == ' ' || line.ptr[0] == '\t')
        return 400;             /* obs-fold, RFC 9112 5.2: reject */
    const char *colon = (const char *)memchr(line.ptr, ':', line.len);
    if (colon == NULL)
        return 400;
    struct str_view name = { line.ptr, (size_t)(colon - line.ptr) };
    struct str_view value = { colon + 1, line.len - name.len - 1 };
    if (!is_token(name))
        return 400;             /* also refuses "Name :" (RFC 9112 5.1) */
    value = view_trim(value);
    for (size_t i = 0; i < value.len; i++) {
        unsigned char ch = (unsigned char)value.ptr[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return 400;         /* bare CR, NUL: smuggling material */
    }
    if (rq->n_headers == MAX_HEADERS)
        return 431;
    rq->headers[rq->n_headers].name = name;
    rq->headers[rq->n_headers].value = value;
    rq->n_headers++;
    return 0;
}

/* The value of the first header called name, or an empty view with ptr NULL. */
static struct str_view header_get(const struct request *rq, const char *name)
{
    for (size_t i = 0; i < rq->n_headers; i++)
        if (view_ieq(rq->headers[i].name, name))
            return rq->headers[i].value;
    struct str_view none = { NULL, 0 };
    return none;
}

/*
 * 1 if some comma-separated element of some header called name equals token
 * (case-insensitive), else 0. Used for Connection and Transfer-Encoding.
 */
static int header_has_token(const struct request *rq, const char *name, const char *token)
{
    for (size_t i = 0; i < rq->n_headers; i++) {
        if (!view_ieq(rq->headers[i].name, name))
            continue;
        struct str_view v = rq->headers[i].value;
        while (v.len > 0) {
            const char *comma = (const char *)memchr(v.ptr, ',', v.len);
            size_t len = comma != NULL ? (size_t)(comma - v.ptr) : v.len;
            struct str_view item = { v.ptr, len };
            if (view_ieq(view_trim(item), token))
                return 1;
            v.ptr += comma != NULL ? len + 1 : len;
            v.len -= comma != NULL ? len + 1 : len;
        }
    }
    return 0;
}

/*
 * Check that every Transfer-Encoding element is "chunked" and there is at
 * least one. Returns 0 (no TE header), 1 (chunked), 501 (other codings).
 */
static int parse_transfer_encoding(const struct request *rq)
{
    int seen = 0;

    for (size_t i = 0; i < rq->n_headers; i++) {
        if (!view_ieq(rq->headers[i].name, "transfer-encoding"))
            continue;
        struct str_view v = rq->headers[i].value;
        while (v.len > 0) {
            const char *comma = (const char *)memchr(v.ptr, ',', v.len);
            size_t len = comma != NULL ? (size_t)(comma - v.ptr) : v.len;
            struct str_view item = { v.ptr, len };
            item = view_trim(item);
            if (item.len > 0 && !view_ieq(item, "chunked"))
                return 501;
            seen |= item.len > 0;
            v.ptr += comma != NULL ? len + 1 : len;
            v.len -= comma != NULL ? len + 1 : len;
        }
        if (!seen)
            return 501;          /* "Transfer-Encoding:" with nothing in it */
    }
    return seen;
}

/*
 * Decide how the body is framed (RFC 9112 6.3): chunked wins over
 * Content-Length and closes the connection afterwards; several
 * Content-Length headers must agree. Returns 0, 400 or 501.
 */
static int parse_framing(struct request *rq)
{
    int te = parse_transfer_encoding(rq);
    int have_cl = 0;
    unsigned long long cl = 0;

    if (te == 501)
        return 501;
    for (size_t i = 0; i < rq->n_headers; i++) {
        unsigned long long n;
        if (!view_ieq(rq->headers[i].name, "content-length"))
            continue;
        if (parse_u64(rq->headers[i].value, ~0ULL >> 1, &n) == -1 || (have_cl && n != cl))
            return 400;
        cl = n;
        have_cl = 1;
    }
    if (te == 1) {
        rq->body = BODY_CHUNKED;
        rq->chunk = CHUNK_SIZE;
        if (have_cl || rq->minor == 0)
            rq->keep_alive = 0;  /* RFC 9112 6.1: suspicious framing, close after */
    } else if (have_cl && cl > 0) {
        rq->body = BODY_LENGTH;
        rq->body_left = cl;
    }
    rq->body_done = rq->body == BODY_NONE;
    return 0;
}

/*
 * Parse the raw head in head[0..len) into rq (views point into head).
 * Returns 0, or the HTTP status to answer with: 400, 431, 501 or 505.
 * rq->line_ok says whether method and target are usable even on error.
 */
static int parse_head(struct request *rq, const char *head, size_t len)
{
    const char *p = head;
    const char *end = head + len;
    struct str_view line;
    int status;

    memset(rq, 0, sizeof *rq);
    rq->head_len = len;
    rq->minor = 1;
    if (next_line(&p, end, &line) == -1)
        return 400;
    status = parse_request_line(rq, line);
    if (status != 0)
        return status;
    while (next_line(&p, end, &line) == 0 && line.len > 0) {
        status = parse_header_line(rq, line);
        if (status != 0)
            return status;
    }
    if (split_target(rq) == -1)
        return 400;
    rq->is_head = view_eq(rq->method, "HEAD");
    if (rq->minor >= 1)
        rq->keep_alive = !header_has_token(rq, "connection", "close");
    else
        rq->keep_alive = header_has_token(rq, "connection", "keep-alive");
    rq->expect_continue = rq->minor >= 1 && view_ieq(header_get(rq, "expect"), "100-continue");
    return parse_framing(rq);
}

/* ---------------------------------------------------------------- bodies */

/* Parse a chunk-size line: hex digits, then optional BWS and extensions. */
static int parse_chunk_size(struct str_view line, unsigned long long *size)
{
    unsigned long long n = 0;
    size_t i = 0;

    for (; i < line.len; i++) {
        int ch = line.ptr[i];
        int digit;
        if (ch >= '0' && ch <= '9')
            digit = ch - '0';
        else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
            digit = (ch | 0x20) - 'a' + 10;
        else
            break;
        n = n * 16 + (unsigned long long)digit;
        if (n > MAX_CHUNK_SIZE)
            return -1;
    }
    if (i == 0)
        return -1;
    while (i < line.len && (line.ptr[i] == ' ' || line.ptr[i] == '\t'))
        i++;
    if (i < line.len && line.ptr[i] != ';')
        return -1;
    *size = n;
    return 0;
}

/* Read and drop trailer lines up to the empty line. Returns 0 or -1. */
static int read_trailers(struct conn *c)
{
    size_t total = 0;
    struct str_view line;

    for (;;) {
        if (conn_read_line(c, &line) == -1)
            return -1;
        if (line.len == 0)
            return 0;
        total += line.len;
        if (total > MAX_TRAILER_BYTES)
            return -1;
    }
}

/*
 * Decode the next piece of a chunked body (RFC 9112 7.1) into buf.
 * Returns a count > 0, 0 at the end of the body, -1 on malformed input or
 * a dead connection.
 */
static ssize_t read_chunked(struct conn *c, char *buf, size_t cap)
{
    struct request *rq = &c->rq;
    struct str_view line;

    for (;;) {
        switch (rq->chunk) {
        case CHUNK_SIZE:        /* "hex[;ext]" line */
            if (conn_read_line(c, &line) == -1 || parse_chunk_size(line, &rq->body_left) == -1)
                return -1;
            rq->chunk = rq->body_left == 0 ? CHUNK_TRAILER : CHUNK_DATA;
            break;
        case CHUNK_DATA: {      /* body_left bytes of data */
            size_t want = rq->body_left < cap ? (size_t)rq->body_left : cap;
            ssize_t n = conn_read_some(c, buf, want);
            if (n <= 0)
                return -1;
            rq->body_left -= (unsigned long long)n;
            if (rq->body_left == 0)
                rq->chunk = CHUNK_DATA_END;
            return n;
        }
        case CHUNK_DATA_END:    /* the CRLF closing the data */
            if (conn_read_line(c, &line) == -1 || line.len != 0)
                return -1;
            rq->chunk = CHUNK_SIZE;
            break;
        case CHUNK_TRAILER:     /* trailer fields, then an empty line */
            if (read_trailers(c) == -1)
                return -1;
            rq->chunk = CHUNK_DONE;
            return 0;
        case CHUNK_DONE:
            return 0;
        }
    }
}

/*
 * Read the next piece of the request body into buf (decoded). Returns a
 * count > 0, 0 when the body is complete, -1 on a malformed body or a dead
 * connection (the connection must then be closed). Blocks.
 */
static ssize_t body_read(struct conn *c, char *buf, size_t cap)
{
    struct request *rq = &c->rq;
    ssize_t n;

    if (rq->body_done)
        return 0;
    if (rq->body == BODY_CHUNKED) {
        n = read_chunked(c, buf, cap);
    } else {
        size_t want = rq->body_left < cap ? (size_t)rq->body_left : cap;
        n = conn_read_some(c, buf, want);
        if (n == 0)
            n = -1;              /* EOF before Content-Length bytes */
        if (n > 0)
            rq->body_left -= (unsigned long long)n;
        if (n > 0 && rq->body_left == 0)
            rq->body_done = 1;
    }
    if (n > 0)
        rq->body_total += (unsigned long long)n;
    if (n == 0)
        rq->body_done = 1;
    return n;
}

/* Read and drop the rest of the request body. Returns 0 or -1. */
static int body_drain(struct conn *c)
{
    ssize_t n;

    while ((n = body_read(c, c->io, sizeof c->io)) > 0)
        ;
    return n == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- responses */

/* The reason phrase for status, "Status" for codes without one here. */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

/* Format t as an IMF-fixdate (RFC 9110 5.6.7) into buf. Returns 0 or -1. */
static int http_date(time_t t, char *buf, size_t cap)
{
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL)
        return -1;
    return strftime(buf, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0 ? -1 : 0;
}

/*
 * Queue a response head: status line, Date, Server, X-Backend, the
 * route's extra lines (each ending CRLF, may be ""), framing, Connection.
 * content_length < 0 sends no Content-Length; chunked adds
 * Transfer-Encoding. Returns 0 or -1 (caller closes).
 */
static int send_head(struct conn *c, int status, const char *extra, long long content_length, int chunked)
{
    const struct request *rq = &c->rq;
    char head[RESP_HEAD_BYTES];
    char date[64];
    char length[64] = "";
    const char *connection = "";

    if (http_date(time(NULL), date, sizeof date) == -1)
        return -1;
    if (content_length >= 0)
        snprintf(length, sizeof length, "Content-Length: %lld\r\n", content_length);
    if (!rq->keep_alive)
        connection = "Connection: close\r\n";
    else if (rq->minor == 0)
        connection = "Connection: keep-alive\r\n";
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: pibl-origin\r\nX-Backend: %s\r\n%s%s%s%s\r\n",
                     status, reason_phrase(status), date, g_cfg.name, extra, length,
                     chunked ? "Transfer-Encoding: chunked\r\n" : "", connection);
    if (n < 0 || (size_t)n >= sizeof head)
        return -1;
    return out_put(c, head, (size_t)n);
}

/*
 * Send an interim 1xx response right away (100 Continue, 103 Early Hints).
 * Never sent to HTTP/1.0 clients (RFC 9110 15.2). Returns 0 or -1.
 */
static int send_interim(struct conn *c, int status, const char *extra)
{
    char head[RESP_HEAD_BYTES];

    if (c->rq.minor == 0)
        return 0;
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nX-Backend: %s\r\n%s\r\n",
                     status, reason_phrase(status), g_cfg.name, extra);
    if (n < 0 || (size_t)n >= sizeof head)
        return -1;
    if (out_put(c, head, (size_t)n) == -1)
        return -1;
    return out_flush(c);
}

/*
 * Send a whole response with a small in-memory body (not sent for HEAD).
 * 1xx, 204 and 304 get neither Content-Length nor body. Returns 0 or -1.
 */
static int send_simple(struct conn *c, int status, const char *extra, const char *body, size_t body_len)
{
    int bodiless = status == 204 || status == 304;

    if (send_head(c, status, extra, bodiless ? -1 : (long long)body_len, 0) == -1)
        return -1;
    if (!bodiless && !c->rq.is_head && out_put(c, body, body_len) == -1)
        return -1;
    return out_flush(c);
}

/*
 * Answer with a short text/plain error body. 4xx/5xx framing errors must
 * close, so callers clear keep_alive first when needed. Returns 0 or -1.
 */
static int send_error(struct conn *c, int status)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));

    if (n < 0 || (size_t)n >= sizeof body)
        return -1;
    return send_simple(c, status, "Content-Type: text/plain; charset=utf-8\r\n", body, (size_t)n);
}

/* ---------------------------------------------------------------- queries */

/* The value of one hex digit, or -1. */
static int hex_value(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
        return (ch | 0x20) - 'a' + 10;
    return -1;
}

/*
 * Percent-decode src into dst (NUL-terminated), '+' as space when
 * plus_space. Returns the decoded length, or -1 on a bad escape, an encoded
 * NUL or a result that does not fit in cap.
 */
static long url_decode(struct str_view src, char *dst, size_t cap, int plus_space)
{
    size_t n = 0;

    for (size_t i = 0; i < src.len; i++) {
        int ch = (unsigned char)src.ptr[i];
        if (ch == '%') {
            if (i + 2 >= src.len)
                return -1;
            int hi = hex_value(src.ptr[i + 1]);
            int lo = hex_value(src.ptr[i + 2]);
            if (hi == -1 || lo == -1)
                return -1;
            ch = hi * 16 + lo;
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        if (ch == 0 || n + 1 >= cap)
            return -1;
        dst[n++] = (char)ch;
    }
    dst[n] = '\0';
    return (long)n;
}

/*
 * Find key in the query ("a=1&b=2") and decode its value into out.
 * Returns the value length, -1 when absent, -2 when malformed or too long.
 */
static long query_get(const struct request *rq, const char *key, char *out, size_t cap)
{
    struct str_view q = rq->query;
    size_t key_len = strlen(key);

    while (q.len > 0) {
        const char *amp = (const char *)memchr(q.ptr, '&', q.len);
        size_t len = amp != NULL ? (size_t)(amp - q.ptr) : q.len;
        if (len >= key_len && memcmp(q.ptr, key, key_len) == 0 &&
            (len == key_len || q.ptr[key_len] == '=')) {
            struct str_view v = { q.ptr + key_len, len - key_len };
            if (v.len > 0) {
                v.ptr++;
                v.len--;
            }
            long n = url_decode(v, out, cap, 1);
            return n < 0 ? -2 : n;
        }
        q.ptr += amp != NULL ? len + 1 : len;
        q.len -= amp != NULL ? len + 1 : len;
    }
    return -1;
}

/*
 * Read the number key from the query: def when absent, else a decimal in
 * 0..max. Returns 0 with *out set, or -1 (answer 400).
 */
static int query_u64(const struct request *rq, const char *key, unsigned long long def,
                     unsigned long long max, unsigned long long *out)
{
    char buf[32];
    long n = query_get(rq, key, buf, sizeof buf);

    if (n == -1) {
        *out = def;
        return 0;
    }
    if (n < 0)
        return -1;
    struct str_view v = { buf, (size_t)n };
    return parse_u64(v, max, out);
}

/*
 * Read a printable string parameter (visible ASCII and spaces) for use in
 * a response header. Returns its length, -1 when absent, -2 when unusable.
 */
static long query_header_value(const struct request *rq, const char *key, char *out, size_t cap)
{
    long n = query_get(rq, key, out, cap);

    for (long i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] >= 0x7f)
            return -2;
    return n;
}

/* ---------------------------------------------------------------- static files */

/* The Content-Type for a file name, by extension. */
static const char *content_type(const char *path)
{
    static const struct { const char *ext; const char *type; } types[] = {
        { ".html", "text/html; charset=utf-8" },
        { ".htm", "text/html; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" },
        { ".js", "text/javascript; charset=utf-8" },
        { ".json", "application/json" },
        { ".txt", "text/plain; charset=utf-8" },
        { ".xml", "application/xml" },
        { ".svg", "image/svg+xml" },
        { ".png", "image/png" },
        { ".jpg", "image/jpeg" },
        { ".jpeg", "image/jpeg" },
        { ".gif", "image/gif" },
        { ".webp", "image/webp" },
        { ".ico", "image/x-icon" },
        { ".pdf", "application/pdf" },
        { ".wasm", "application/wasm" },
    };
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');

    if (dot != NULL && (slash == NULL || dot > slash))
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcasecmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* 1 if the decoded path has a ".." segment, else 0. */
static int has_dotdot(const char *path)
{
    for (const char *p = path; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == path || p[-1] == '/') && (p[2] == '\0' || p[2] == '/'))
            return 1;
    return 0;
}

/*
 * 1 if the If-None-Match list (or "*") holds etag, weak comparison
 * (RFC 9110 13.1.2), else 0.
 */
static int etag_matches(struct str_view list, const char *etag)
{
    struct str_view tag = { etag, strlen(etag) };

    if (tag.len > 2 && tag.ptr[0] == 'W' && tag.ptr[1] == '/') {
        tag.ptr += 2;
        tag.len -= 2;
    }
    while (list.len > 0) {
        const char *comma = (const char *)memchr(list.ptr, ',', list.len);
        size_t len = comma != NULL ? (size_t)(comma - list.ptr) : list.len;
        struct str_view item = { list.ptr, len };
        item = view_trim(item);
        if (item.len > 2 && item.ptr[0] == 'W' && item.ptr[1] == '/') {
            item.ptr += 2;
            item.len -= 2;
        }
        if (view_eq(item, "*") || (item.len == tag.len && memcmp(item.ptr, tag.ptr, tag.len) == 0))
            return 1;
        list.ptr += comma != NULL ? len + 1 : len;
        list.len -= comma != NULL ? len + 1 : len;
    }
    return 0;
}

/*
 * 1 if the request's validators say the client's copy is current: an
 * If-None-Match that matches, or (without one) an If-Modified-Since at or
 * after mtime (RFC 9110 13.2.2). Else 0.
 */
static int not_modified(const struct request *rq, const char *etag, time_t mtime)
{
    struct str_view inm = header_get(rq, "if-none-match");
    struct str_view ims = header_get(rq, "if-modified-since");
    char buf[64];
    struct tm tm;

    if (inm.ptr != NULL)
        return etag_matches(inm, etag);
    if (ims.ptr == NULL || ims.len >= sizeof buf)
        return 0;
    memcpy(buf, ims.ptr, ims.len);
    buf[ims.len] = '\0';
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return 0;
    return timegm(&tm) >= mtime;
}

/*
 * Send size bytes of the open file fd to the client with sendfile(),
 * falling back to read()/send() through c->io when sendfile is not
 * supported. Returns 0, or -1 (the connection must close: the promised
 * Content-Length cannot be kept).
 */
static int send_file(struct conn *c, int fd, off_t size)
{
    off_t offset = 0;

    while (offset < size) {
        size_t want = size - offset > (1 << 30) ? (size_t)1 << 30 : (size_t)(size - offset);
        ssize_t n = sendfile(c->fd, fd, &offset, want);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EINVAL || errno == ENOSYS) && offset == 0)
            break;
        if (n <= 0)
            return -1;   /* error, timeout, or the file shrank */
    }
    while (offset < size) {
        size_t want = size - offset > (off_t)sizeof c->io ? sizeof c->io : (size_t)(size - offset);
        ssize_t n = pread(fd, c->io, want, offset);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0 || send_all(c->fd, c->io, (size_t)n) == -1)
            return -1;
        offset += n;
    }
    return 0;
}

/*
 * Open ROOT + path for reading, using index.html for directories. Returns
 * an fd with *st filled, or -1 with *status set to 404, 403, 414 or 500.
 */
static int open_static(const char *path, struct stat *st, char *fs_path, size_t cap, int *status)
{
    size_t len = strlen(path);
    const char *index = len > 0 && path[len - 1] == '/' ? "index.html" : "";

    for (int tries = 0; tries < 2; tries++) {
        int n = snprintf(fs_path, cap, "%s%s%s", g_cfg.root, path, index);
        if (n < 0 || (size_t)n >= cap) {
            *status = 414;
            return -1;
        }
        int fd = open(fs_path, O_RDONLY | O_CLOEXEC);
        if (fd == -1) {
            *status = errno == ENOENT || errno == ENOTDIR ? 404 : errno == EACCES ? 403 : 500;
            return -1;
        }
        if (fstat(fd, st) == 0 && S_ISREG(st->st_mode))
            return fd;
        close(fd);
        if (!S_ISDIR(st->st_mode) || index[0] != '\0')
            break;
        index = "/index.html";
    }
    *status = 404;
    return -1;
}

/*
 * GET|HEAD of a file under ROOT: 200 with Content-Type, Last-Modified and
 * ETag, 304 when the client's validators match, 403 for "..", 404, 405.
 * Returns 0 (keep going if rq allows) or -1 (close).
 */
static int serve_static(struct conn *c)
{
    struct request *rq = &c->rq;
    char path[MAX_PATH_BYTES];
    char fs_path[MAX_PATH_BYTES];
    char extra[EXTRA_HEAD_BYTES];
    char etag[64];
    char modified[64];
    struct stat st;
    int status;

    if (!view_eq(rq->method, "GET") && !rq->is_head)
        return send_simple(c, 405, "Allow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\n",
                           "405 Method Not Allowed\n", sizeof "405 Method Not Allowed\n" - 1);
    if (url_decode(rq->path, path, sizeof path, 0) == -1)
        return send_error(c, 400);
    if (has_dotdot(path))
        return send_error(c, 403);
    int fd = open_static(path, &st, fs_path, sizeof fs_path, &status);
    if (fd == -1)
        return send_error(c, status);
    snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtime);
    if (http_date(st.st_mtime, modified, sizeof modified) == -1)
        modified[0] = '\0';
    int n = snprintf(extra, sizeof extra, "Content-Type: %s\r\nLast-Modified: %s\r\nETag: %s\r\n",
                     content_type(fs_path), modified, etag);
    int rc = -1;
    if (n < 0 || (size_t)n >= sizeof extra)
        goto done;
    if (not_modified(rq, etag, st.st_mtime)) {
        rc = send_simple(c, 304, extra, "", 0);
        goto done;
    }
    if (send_head(c, 200, extra, (long long)st.st_size, 0) == -1 || out_flush(c) == -1)
        goto done;
    rc = rq->is_head ? 0 : send_file(c, fd, st.st_size);
done:
    close(fd);
    return rc;
}

/* ---------------------------------------------------------------- test routes */

/*
 * /_echo, any method: 200 text/plain with the raw request head (request
 * line, headers exactly as received, blank line) then the body bytes. Bodies
 * over ECHO_MAX_BODY are only counted ("body-bytes=N not-echoed").
 * X-Body-Bytes carries the decoded body size. Returns 0 or -1.
 */
static int serve_echo(struct conn *c)
{
    struct request *rq = &c->rq;
    char *body = NULL;
    char extra[EXTRA_HEAD_BYTES];
    char note[96] = "";
    unsigned long long shown;    /* body bytes of the reply after the head */
    ssize_t n;
    int rc = -1;

    if (rq->body != BODY_NONE && (body = (char *)malloc(ECHO_MAX_BODY)) == NULL)
        return send_error(c, 500);
    while ((n = body_read(c, c->io, sizeof c->io)) > 0) {
        if (rq->body_total <= ECHO_MAX_BODY)
            memcpy(body + rq->body_total - (unsigned long long)n, c->io, (size_t)n);
    }
    if (n == -1) {
        rq->keep_alive = 0;
        send_error(c, 400);      /* the body is broken: close either way */
        goto done;
    }
    shown = rq->body_total;
    if (rq->body_total > ECHO_MAX_BODY) {
        snprintf(note, sizeof note, "body-bytes=%llu not-echoed\n", rq->body_total);
        shown = strlen(note);
    }
    snprintf(extra, sizeof extra, "Content-Type: text/plain; charset=utf-8\r\nX-Body-Bytes: %llu\r\n",
             rq->body_total);
    if (send_head(c, 200, extra, (long long)(rq->head_len + shown), 0) == -1)
        goto done;
    if (!rq->is_head) {
        if (out_put(c, c->head, rq->head_len) == -1)
            goto done;
        if (note[0] != '\0' ? out_put(c, note, strlen(note)) == -1
                            : rq->body_total > 0 && out_put(c, body, (size_t)rq->body_total) == -1)
            goto done;
    }
    rc = out_flush(c);
done:
    free(body);
    return rc;
}

/*
 * Create UPLOAD_DIR/upload-<n> exclusively with the next free n (other
 * origins may share the folder). Returns an fd with path filled, or -1.
 */
static int open_upload_file(char *path, size_t cap)
{
    for (int tries = 0; tries < MAX_UPLOAD_TRIES; tries++) {
        unsigned long n = ++g_upload_count;
        int len = snprintf(path, cap, "%s/upload-%lu", g_cfg.upload_dir, n);
        if (len < 0 || (size_t)len >= cap)
            return -1;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd != -1 || errno != EEXIST)
            return fd;
    }
    return -1;
}

/* Write all len bytes to a file, retrying EINTR. Returns 0 or -1. */
static int file_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * POST|PUT /_upload: store the decoded body in UPLOAD_DIR/upload-<n> and
 * answer "bytes=N file=PATH\n". Without -u the body is counted and
 * dropped ("file=-"). Returns 0 or -1.
 */
static int serve_upload(struct conn *c)
{
    struct request *rq = &c->rq;
    char path[MAX_PATH_BYTES] = "-";
    char reply[MAX_PATH_BYTES + 64];
    int fd = -1;
    int write_failed = 0;
    ssize_t n;

    if (!view_eq(rq->method, "POST") && !view_eq(rq->method, "PUT"))
        return send_simple(c, 405, "Allow: POST, PUT\r\nContent-Type: text/plain; charset=utf-8\r\n",
                           "405 Method Not Allowed\n", sizeof "405 Method Not Allowed\n" - 1);
    if (g_cfg.upload_dir != NULL && (fd = open_upload_file(path, sizeof path)) == -1)
        return send_error(c, 500);
    while ((n = body_read(c, c->io, sizeof c->io)) > 0)
        if (fd != -1 && !write_failed && file_write_all(fd, c->io, (size_t)n) == -1)
            write_failed = 1;
    if (fd != -1 && close(fd) == -1)
        write_failed = 1;
    if (n == -1) {               /* malformed body: answer, then close */
        if (fd != -1)
            unlink(path);
        rq->keep_alive = 0;
        send_error(c, 400);
        return -1;
    }
    if (write_failed) {          /* disk full etc.: the request itself was fine */
        unlink(path);
        return send_error(c, 500);
    }
    int len = snprintf(reply, sizeof reply, "bytes=%llu file=%s\n", rq->body_total, path);
    if (len < 0 || (size_t)len >= sizeof reply)
        return -1;
    return send_simple(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", reply, (size_t)len);
}

/*
 * /_chunked?n=N&size=S: N chunks of S bytes of the digit pattern
 * (continuous across chunks, so the body equals /_bytes?size=N*S). HTTP/1.0
 * clients cannot read chunked: they get a close-delimited body. Returns 0
 * or -1 (close).
 */
static int serve_chunked(struct conn *c)
{
    struct request *rq = &c->rq;
    unsigned long long n_chunks, size;
    char line[32];

    if (query_u64(rq, "n", DEFAULT_CHUNKS, MAX_CHUNKS, &n_chunks) == -1 ||
        query_u64(rq, "size", DEFAULT_CHUNK_BYTES, MAX_GEN_CHUNK, &size) == -1)
        return send_error(c, 400);
    if (rq->minor == 0)
        rq->keep_alive = 0;
    if (send_head(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", -1, rq->minor >= 1) == -1)
        return -1;
    if (rq->is_head)
        return out_flush(c);
    for (unsigned long long i = 0; i < n_chunks && size > 0; i++) {
        int len = snprintf(line, sizeof line, "%llx\r\n", size);
        if (rq->minor >= 1 && out_put(c, line, (size_t)len) == -1)
            return -1;
        if (out_digits(c, i * size, size) == -1)
            return -1;
        if (rq->minor >= 1 && out_put(c, "\r\n", 2) == -1)
            return -1;
    }
    if (rq->minor >= 1 && out_put(c, "0\r\n\r\n", 5) == -1)
        return -1;
    return out_flush(c);         /* HTTP/1.0: keep_alive is 0, the caller closes */
}

/*
 * /_close?size=S: 200 without Content-Length, Connection: close, S digit
 * bytes, then close (close-delimited body, RFC 9112 6.3 item 8).
 * Always returns -1 so the caller closes.
 */
static int serve_close(struct conn *c)
{
    struct request *rq = &c->rq;
    unsigned long long size;

    if (query_u64(rq, "size", DEFAULT_GEN_BYTES, MAX_GEN_BYTES, &size) == -1)
        return send_error(c, 400);
    rq->keep_alive = 0;
    if (send_head(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", -1, 0) == -1)
        return -1;
    if (!rq->is_head && out_digits(c, 0, size) == -1)
        return -1;
    out_flush(c);
    return -1;
}

/*
 * /_status/NNN: answer with status NNN (200..599); 204 and 304 without a
 * body, others with "status NNN\n". Returns 0 or -1.
 */
static int serve_status(struct conn *c)
{
    struct str_view code = { c->rq.path.ptr + 9, c->rq.path.len - 9 };
    unsigned long long status;
    char body[32];

    if (code.len != 3 || parse_u64(code, 599, &status) == -1 || status < 200)
        return send_error(c, 400);
    int n = snprintf(body, sizeof body, "status %llu\n", status);
    return send_simple(c, (int)status, "Content-Type: text/plain; charset=utf-8\r\n", body,
                       status == 205 ? 0 : (size_t)n);
}

/* /_slow?ms=N: sleep N ms (up to MAX_SLOW_MS), then 200 "slow\n". */
static int serve_slow(struct conn *c)
{
    unsigned long long ms;
    struct timespec ts;

    if (query_u64(&c->rq, "ms", DEFAULT_SLOW_MS, MAX_SLOW_MS, &ms) == -1)
        return send_error(c, 400);
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    return send_simple(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", "slow\n", 5);
}

/*
 * /_abort?size=S&after=A: promise Content-Length S, send A bytes (A <= S,
 * default S/2), then close: a truncated response on purpose. Always -1.
 */
static int serve_abort(struct conn *c)
{
    struct request *rq = &c->rq;
    unsigned long long size, after;

    if (query_u64(rq, "size", DEFAULT_GEN_BYTES, MAX_GEN_BYTES, &size) == -1 ||
        query_u64(rq, "after", size / 2, size, &after) == -1)
        return send_error(c, 400);
    rq->keep_alive = 0;
    if (send_head(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", (long long)size, 0) == -1)
        return -1;
    if (!rq->is_head && out_digits(c, 0, after) == -1)
        return -1;
    out_flush(c);
    return -1;
}

/* /_1xx: 103 Early Hints with a Link header, then 200 "after-1xx\n". */
static int serve_1xx(struct conn *c)
{
    if (send_interim(c, 103, "Link: </style.css>; rel=preload; as=style\r\n") == -1)
        return -1;
    return send_simple(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", "after-1xx\n", 10);
}

/* /_bytes?size=S: 200 with S digit bytes and Content-Length. */
static int serve_bytes(struct conn *c)
{
    unsigned long long size;

    if (query_u64(&c->rq, "size", DEFAULT_GEN_BYTES, MAX_GEN_BYTES, &size) == -1)
        return send_error(c, 400);
    if (send_head(c, 200, "Content-Type: text/plain; charset=utf-8\r\n", (long long)size, 0) == -1)
        return -1;
    if (!c->rq.is_head && out_digits(c, 0, size) == -1)
        return -1;
    return out_flush(c);
}

/* What one /_cache answer promised, for its 304 check and its body. */
struct cache_reply {
    char etag[MAX_PARAM_BYTES + 8];  /* ETag value sent (quoted), "" when none */
    char vary[MAX_PARAM_BYTES];      /* Vary field value sent ("*" or a name), "" when none */
    int last_modified;               /* lm=1: Last-Modified (g_last_modified) sent */
};

/*
 * Append the /_cache validity fields to extra (used bytes so far in *used):
 * Vary: NAME for vary=NAME (a field name, or "*"); Expires: now + N as an
 * IMF-fixdate for expires=N (N >= 1), the invalid literal "Expires: 0"
 * (RFC 9111 5.3: a time in the past) for expires=0 or any other value;
 * Last-Modified: g_last_modified for lm=1. Records vary and lm in *cr.
 * Returns 0, or -1 on a bad parameter (answer 400).
 */
static int cache_validity_headers(const struct request *rq, char *extra, size_t cap, size_t *used,
                                  struct cache_reply *cr)
{
    char expires[32], lm[8], date[64];
    unsigned long long secs;
    size_t n = *used;

    long vary_len = query_header_value(rq, "vary", cr->vary, sizeof cr->vary);
    long expires_len = query_header_value(rq, "expires", expires, sizeof expires);
    long lm_len = query_get(rq, "lm", lm, sizeof lm);
    if (vary_len == -2 || expires_len == -2 || lm_len == -2)
        return -1;
    struct str_view vary = { cr->vary, vary_len > 0 ? (size_t)vary_len : 0 };
    if (vary_len >= 0 && !view_eq(vary, "*") && !is_token(vary))
        return -1;
    if (vary_len < 0)
        cr->vary[0] = '\0';
    else
        n += (size_t)snprintf(extra + n, cap - n, "Vary: %s\r\n", cr->vary);
    if (expires_len >= 0) {
        struct str_view v = { expires, (size_t)expires_len };
        if (parse_u64(v, MAX_AGE_LIMIT, &secs) == 0 && secs > 0) {
            /* computed before send_head stamps Date, so Expires - Date <= N */
            if (http_date(time(NULL) + (time_t)secs, date, sizeof date) == -1)
                return -1;
            n += (size_t)snprintf(extra + n, cap - n, "Expires: %s\r\n", date);
        } else {
            n += (size_t)snprintf(extra + n, cap - n, "Expires: 0\r\n");
        }
    }
    cr->last_modified = lm_len == 1 && lm[0] == '1';
    if (cr->last_modified) {
        if (http_date(g_last_modified, date, sizeof date) == -1)
            return -1;
        n += (size_t)snprintf(extra + n, cap - n, "Last-Modified: %s\r\n", date);
    }
    if (n >= cap)
        return -1;
    *used = n;
    return 0;
}

/*
 * Build the /_cache response headers into extra: Cache-Control (cc wins
 * over max_age), ETag (quoted unless already), Set-Cookie when cookie=1,
 * then the validity fields of cache_validity_headers. Fills *cr.
 * Returns 0, or -1 on a bad parameter (answer 400).
 */
static int cache_headers(const struct request *rq, unsigned long n, char *extra, size_t cap, struct cache_reply *cr)
{
    char cc[MAX_PARAM_BYTES], tag[MAX_PARAM_BYTES], cookie[8];
    unsigned long long max_age;
    size_t used;

    long cc_len = query_header_value(rq, "cc", cc, sizeof cc);
    long tag_len = query_header_value(rq, "etag", tag, sizeof tag);
    long cookie_len = query_get(rq, "cookie", cookie, sizeof cookie);
    if (cc_len == -2 || tag_len == -2 || cookie_len == -2 ||
        query_u64(rq, "max_age", NO_MAX_AGE, MAX_AGE_LIMIT, &max_age) == -1)
        return -1;
    /* cap holds every line here and in cache_validity_headers: each
       parameter is < MAX_PARAM_BYTES and the fixed parts are short */
    used = (size_t)snprintf(extra, cap, "Content-Type: text/plain; charset=utf-8\r\n");
    if (cc_len >= 0)
        used += (size_t)snprintf(extra + used, cap - used, "Cache-Control: %s\r\n", cc);
    else if (max_age != NO_MAX_AGE)
        used += (size_t)snprintf(extra + used, cap - used, "Cache-Control: max-age=%llu\r\n", max_age);
    cr->etag[0] = '\0';
    if (tag_len > 0) {
        int quoted = tag[0] == '"' || strncmp(tag, "W/", 2) == 0;
        snprintf(cr->etag, sizeof cr->etag, quoted ? "%s" : "\"%s\"", tag);
        used += (size_t)snprintf(extra + used, cap - used, "ETag: %s\r\n", cr->etag);
    }
    if (cookie_len == 1 && cookie[0] == '1')
        used += (size_t)snprintf(extra + used, cap - used, "Set-Cookie: pibl_test=%s-%lu; Path=/\r\n",
                                 g_cfg.name, n);
    if (used >= cap)
        return -1;
    return cache_validity_headers(rq, extra, cap, &used, cr);
}

/*
 * /_cache?max_age=N&etag=X&cc=STRING&cookie=1&vary=NAME&expires=N&lm=1: 200
 * with the fields of cache_headers and the body "cache-body NAME n=<count>"
 * (count of /_cache requests this process saw, so refetches differ) plus
 * " vary=<the request's NAME value>" (at most MAX_PARAM_BYTES of it; "*"
 * for vary=*), then "\n". 304 when If-None-Match matches the etag, or,
 * without If-None-Match, when lm=1 and If-Modified-Since is at or after
 * the Last-Modified sent (RFC 9110 13.2.2). Returns 0 or -1.
 */
static int serve_cache(struct conn *c)
{
    char extra[EXTRA_HEAD_BYTES + 3 * MAX_PARAM_BYTES];
    char body[MAX_NAME_BYTES + 80 + MAX_PARAM_BYTES];
    struct cache_reply cr;
    unsigned long n = ++g_cache_count;
    struct str_view inm = header_get(&c->rq, "if-none-match");
    int len;

    if (cache_headers(&c->rq, n, extra, sizeof extra, &cr) == -1)
        return send_error(c, 400);
    if (inm.ptr != NULL ? cr.etag[0] != '\0' && etag_matches(inm, cr.etag)
                        : cr.last_modified && not_modified(&c->rq, cr.etag, g_last_modified))
        return send_simple(c, 304, extra, "", 0);
    if (cr.vary[0] == '\0') {
        len = snprintf(body, sizeof body, "cache-body %s n=%lu\n", g_cfg.name, n);
    } else {
        struct str_view star = { "*", 1 };
        struct str_view v = strcmp(cr.vary, "*") == 0 ? star : header_get(&c->rq, cr.vary);
        int v_len = v.len > MAX_PARAM_BYTES ? MAX_PARAM_BYTES : (int)v.len;
        len = snprintf(body, sizeof body, "cache-body %s n=%lu vary=%.*s\n", g_cfg.name, n, v_len,
                       v.ptr != NULL ? v.ptr : "");
    }
    if (len < 0 || (size_t)len >= sizeof body)
        return -1;
    return send_simple(c, 200, extra, body, (size_t)len);
}

/* OPTIONS *: 200 listing the methods this server knows. */
static int serve_options(struct conn *c)
{
    return send_simple(c, 200, "Allow: GET, HEAD, POST, PUT, OPTIONS\r\n", "", 0);
}

/* ---------------------------------------------------------------- dispatch */

/* 1 if the path is exactly route or route followed by '/', else 0. */
static int path_is(struct str_view path, const char *route)
{
    size_t len = strlen(route);
    return path.len >= len && memcmp(path.ptr, route, len) == 0 &&
           (path.len == len || path.ptr[len] == '/');
}

/*
 * Append "NAME METHOD TARGET\n" to REQLOG and the raw head plus a blank
 * line to REQLOG.heads, each in one O_APPEND writev under g_log_lock, so
 * lines never interleave (not even between origins sharing the file).
 * Done before the response is sent. Errors are ignored: logging must not
 * cost the request.
 */
static void log_request(const struct conn *c)
{
    const struct request *rq = &c->rq;
    struct iovec line[6] = {
        { (void *)g_cfg.name, strlen(g_cfg.name) }, { (void *)" ", 1 },
        { (void *)rq->method.ptr, rq->method.len }, { (void *)" ", 1 },
        { (void *)rq->target.ptr, rq->target.len }, { (void *)"\n", 1 },
    };
    struct iovec head[2] = { { (void *)c->head, rq->head_len }, { (void *)"\n", 1 } };

    if (g_reqlog_fd == -1)
        return;
    pthread_mutex_lock(&g_log_lock);
    writev_all(g_reqlog_fd, line, 6);
    writev_all(g_heads_fd, head, 2);
    pthread_mutex_unlock(&g_log_lock);
}

/* ---------------------------------------------------------------- websocket */

/* Rotate left, for SHA-1. */
static uint32_t rol32(uint32_t v, int n)
{
    return (v << n) | (v >> (32 - n));
}

/*
 * SHA-1 (FIPS 180-4) of msg[0..len): only for Sec-WebSocket-Accept, which
 * RFC 6455 4.2.2 defines with it. Writes the 20-byte digest to out.
 */
static void sha1(const unsigned char *msg, size_t len, unsigned char out[20])
{
    uint32_t h[5] = { 0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u };
    uint64_t bits = (uint64_t)len * 8;
    size_t total = (len + 9 + 63) / 64 * 64;   /* message, 0x80, zeros, 64-bit length */

    for (size_t off = 0; off < total; off += 64) {
        unsigned char block[64];
        uint32_t w[80];
        for (size_t i = 0; i < 64; i++) {
            size_t k = off + i;
            block[i] = k < len ? msg[k] : k == len ? 0x80 : 0;
        }
        if (off + 64 == total)
            for (int i = 0; i < 8; i++)
                block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
                   (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], cc = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) {
                f = (b & cc) | (~b & d);
                k = 0x5A827999u;
            } else if (i < 40) {
                f = b ^ cc ^ d;
                k = 0x6ED9EBA1u;
            } else if (i < 60) {
                f = (b & cc) | (b & d) | (cc & d);
                k = 0x8F1BBCDCu;
            } else {
                f = b ^ cc ^ d;
                k = 0xCA62C1D6u;
            }
            uint32_t t = rol32(a, 5) + f + e + k + w[i];
            e = d;
            d = cc;
            cc = rol32(b, 30);
            b = a;
            a = t;
        }
        h[0] += a;
        h[1] += b;
        h[2] += cc;
        h[3] += d;
        h[4] += e;
    }
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

/* Base64 (RFC 4648 4) of in[0..len) into out, NUL-terminated; out needs
 * 4 * ((len + 2) / 3) + 1 bytes. */
static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = i + 1 < len ? abc[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Read exactly len bytes (buffered ones first). Returns 0, or -1 at EOF or error. */
static int read_exact(struct conn *c, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = conn_read_some(c, (char *)buf, len);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Send one unmasked frame (server to client, RFC 6455 5.2): first is the
 * FIN bit and opcode byte. Returns 0 or -1.
 */
static int ws_send_frame(struct conn *c, int first, const void *data, uint64_t len)
{
    unsigned char head[10];
    size_t hl = 2;

    head[0] = (unsigned char)first;
    if (len < 126) {
        head[1] = (unsigned char)len;
    } else if (len < 65536) {
        head[1] = 126;
        head[2] = (unsigned char)(len >> 8);
        head[3] = (unsigned char)len;
        hl = 4;
    } else {
        head[1] = 127;
        for (int i = 0; i < 8; i++)
            head[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        hl = 10;
    }
    if (out_put(c, head, hl) == -1 || out_put(c, data, (size_t)len) == -1)
        return -1;
    return out_flush(c);
}

/* A whole message in one frame. Returns 0 or -1. */
static int ws_send(struct conn *c, int opcode, const void *data, size_t len)
{
    return ws_send_frame(c, 0x80 | opcode, data, len);
}

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
static int serve_ws(struct conn *c)
{
    struct request *rq = &c->rq;
    struct str_view key = header_get(rq, "sec-websocket-key");
    struct str_view version = header_get(rq, "sec-websocket-version");
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned long long after_eof;
    unsigned char digest[20], accept_in[64 + sizeof guid];
    char accept[32], extra[EXTRA_HEAD_BYTES], hello[MAX_NAME_BYTES + 16];

    if (query_u64(rq, "after_eof", 0, 1, &after_eof) == -1)
        return send_error(c, 400);
    rq->keep_alive = 0;
    if (!view_eq(rq->method, "GET") || !header_has_token(rq, "upgrade", "websocket") ||
        !header_has_token(rq, "connection", "upgrade"))
        return send_simple(c, 426, "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                           "426 a WebSocket handshake is expected here\n", 43);
    if (!view_eq(version, "13"))
        return send_simple(c, 426, "Sec-WebSocket-Version: 13\r\n", "426 version 13 only\n", 20);
    if (key.len != 24)
        return send_error(c, 400);
    memcpy(accept_in, key.ptr, key.len);
    memcpy(accept_in + key.len, guid, sizeof guid - 1);
    sha1(accept_in, key.len + sizeof guid - 1, digest);
    base64(digest, sizeof digest, accept);
    int n = snprintf(extra, sizeof extra,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\nX-Backend: %s\r\n\r\n", accept, g_cfg.name);
    if (n < 0 || (size_t)n >= sizeof extra || out_put(c, extra, (size_t)n) == -1)
        return -1;
    n = snprintf(hello, sizeof hello, "hello from %s", g_cfg.name);
    if (ws_send(c, 0x1, hello, (size_t)n) == -1)
        return -1;

    unsigned char *payload = (unsigned char *)malloc(ECHO_MAX_BODY);
    if (payload == NULL)
        return -1;
    for (;;) {
        unsigned char h[2], ext[8], mask[4];
        if (read_exact(c, h, 2) == -1) {
            if (after_eof) {
                n = snprintf(hello, sizeof hello, "bye from %s", g_cfg.name);
                ws_send(c, 0x1, hello, (size_t)n);
            }
            break;
        }
        int opcode = h[0] & 0x0f, fin = h[0] & 0x80;
        uint64_t len = h[1] & 0x7f;
        if (len == 126 || len == 127) {
            size_t el = len == 126 ? 2 : 8;
            if (read_exact(c, ext, el) == -1)
                break;
            len = 0;
            for (size_t i = 0; i < el; i++)
                len = len << 8 | ext[i];
        }
        if (!(h[1] & 0x80)) {                  /* unmasked from a client: 1002 */
            ws_send(c, 0x8, "\x03\xea", 2);
            break;
        }
        if (len > ECHO_MAX_BODY) {             /* too big: 1009 */
            ws_send(c, 0x8, "\x03\xf1", 2);
            break;
        }
        if (read_exact(c, mask, 4) == -1 || read_exact(c, payload, (size_t)len) == -1)
            break;
        for (uint64_t i = 0; i < len; i++)
            payload[i] ^= mask[i % 4];
        if (opcode == 0x8) {                   /* close: answer it, then end */
            ws_send(c, 0x8, payload, (size_t)(len >= 2 ? 2 : 0));
            break;
        }
        if (opcode == 0x9) {
            if (ws_send(c, 0xA, payload, (size_t)len) == -1)
                break;
            continue;
        }
        if (opcode == 0xA)
            continue;
        /* Echo text, binary and continuation frames as they came. */
        if (ws_send_frame(c, fin | opcode, payload, len) == -1)
            break;
    }
    free(payload);
    return -1;
}

/*
 * /_sse?n=N&ms=M: server-sent events (text/event-stream, no length: chunked
 * for HTTP/1.1, close-delimited for 1.0), N events ("data: event I from
 * NAME"), each written and flushed M ms after the one before: a test that a
 * proxy passes a stream on as it comes. Returns 0 or -1.
 */
static int serve_sse(struct conn *c)
{
    struct request *rq = &c->rq;
    unsigned long long n_events, ms;
    char ev[MAX_NAME_BYTES + 64], line[32];

    if (query_u64(rq, "n", DEFAULT_CHUNKS, MAX_CHUNKS, &n_events) == -1 ||
        query_u64(rq, "ms", 100, MAX_SLOW_MS, &ms) == -1)
        return send_error(c, 400);
    if (rq->minor == 0)
        rq->keep_alive = 0;
    if (send_head(c, 200, "Content-Type: text/event-stream\r\nCache-Control: no-store\r\n", -1,
                  rq->minor >= 1) == -1 || out_flush(c) == -1)
        return -1;
    if (rq->is_head)
        return 0;
    for (unsigned long long i = 0; i < n_events; i++) {
        if (i > 0) {
            struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
            while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
                ;
        }
        int len = snprintf(ev, sizeof ev, "data: event %llu from %s\n\n", i + 1, g_cfg.name);
        int ll = snprintf(line, sizeof line, "%x\r\n", len);
        if ((rq->minor >= 1 && out_put(c, line, (size_t)ll) == -1) || out_put(c, ev, (size_t)len) == -1 ||
            (rq->minor >= 1 && out_put(c, "\r\n", 2) == -1) || out_flush(c) == -1)
            return -1;
    }
    if (rq->minor >= 1 && out_put(c, "0\r\n\r\n", 5) == -1)
        return -1;
    return out_flush(c);
}

/*
 * Route the parsed request in c->rq, then finish reading its body so the
 * next pipelined request starts at the right byte. Returns 1 to keep the
 * connection, 0 to close it.
 */
static int handle_request(struct conn *c)
{
    struct request *rq = &c->rq;
    struct str_view p = rq->path;
    int rc;

    if (rq->expect_continue && rq->body != BODY_NONE && send_interim(c, 100, "") == -1)
        return 0;
    if (path_is(p, "/_echo"))
        rc = serve_echo(c);
    else if (view_eq(p, "/_upload"))
        rc = serve_upload(c);
    else if (view_eq(p, "/_chunked"))
        rc = serve_chunked(c);
    else if (view_eq(p, "/_close"))
        rc = serve_close(c);
    else if (p.len > 9 && memcmp(p.ptr, "/_status/", 9) == 0)
        rc = serve_status(c);
    else if (view_eq(p, "/_slow"))
        rc = serve_slow(c);
    else if (view_eq(p, "/_abort"))
        rc = serve_abort(c);
    else if (view_eq(p, "/_1xx"))
        rc = serve_1xx(c);
    else if (view_eq(p, "/_bytes"))
        rc = serve_bytes(c);
    else if (view_eq(p, "/_cache"))
        rc = serve_cache(c);
    else if (view_eq(p, "/_ws"))
        rc = serve_ws(c);
    else if (view_eq(p, "/_sse"))
        rc = serve_sse(c);
    else if (view_eq(p, "*"))
        rc = serve_options(c);
    else
        rc = serve_static(c);
    if (rc == -1 || !rq->keep_alive)
        return 0;
    return body_drain(c) == 0;
}

/*
 * Close the client socket. When linger is set, first half-close and read
 * what the peer still sends (bounded), so an early response is not lost to
 * a TCP reset caused by unread request bytes.
 */
static void conn_close(int fd, int linger)
{
    if (linger && shutdown(fd, SHUT_WR) == 0) {
        struct timeval tv = { LINGER_TIMEOUT_SEC, 0 };
        char buf[4096];
        size_t total = 0;
        ssize_t n;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        while (total < LINGER_MAX_BYTES && (n = recv_retry(fd, buf, sizeof buf)) > 0)
            total += (size_t)n;
    }
    close(fd);
}

/*
 * Connection thread: serve requests until the client closes, asks to
 * close, errs or stays silent for IO_TIMEOUT_SEC. Frees c and closes its
 * socket. Detached; returns NULL.
 */
static void *conn_thread(void *arg)
{
    struct conn *c = (struct conn *)arg;
    int linger = 0;
    size_t head_len;

    for (;;) {
        int r = read_head(c, &head_len);
        if (r == 0 || r == -1)
            break;
        linger = 1;
        if (r == -2) {
            memset(&c->rq, 0, sizeof c->rq);
            c->rq.minor = 1;
            send_error(c, 431);
            break;
        }
        int status = parse_head(&c->rq, c->head, head_len);
        if (c->rq.line_ok)
            log_request(c);
        if (status != 0) {
            c->rq.keep_alive = 0;
            send_error(c, status);
            break;
        }
        if (!handle_request(c))
            break;
        linger = 0;
    }
    conn_close(c->fd, linger);
    free(c);
    g_n_conns--;
    return NULL;
}

/* ---------------------------------------------------------------- start-up */

/*
 * Set up an accepted socket (no Nagle delay for small responses, I/O
 * timeouts) and start its detached thread with a THREAD_STACK_BYTES stack.
 * Over MAX_CONNECTIONS the client gets a 503 and is closed. Never blocks
 * on the client.
 */
static void start_connection(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    struct timeval tv = { IO_TIMEOUT_SEC, 0 };
    int one = 1;
    pthread_attr_t attr;
    pthread_t tid;

    if (g_n_conns.fetch_add(1) >= MAX_CONNECTIONS) {
        send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        goto fail;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    {
        struct conn *c = (struct conn *)malloc(sizeof *c);
        if (c == NULL)
            goto fail;
        c->fd = fd;
        c->r_start = c->r_end = c->out_len = 0;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&tid, &attr, conn_thread, c);
        pthread_attr_destroy(&attr);
        if (err == 0)
            return;
        free(c);
    }
fail:
    close(fd);
    g_n_conns--;
}

/*
 * Bind and listen on addr:port (IPv4 or IPv6 literal). Stores the real
 * port in *real_port (port 0 picks a free one). Returns the non-blocking
 * listening fd, or -1 after printing why.
 */
static int open_listener(const char *addr, int port, int *real_port)
{
    struct addrinfo hints, *ai = NULL;
    struct sockaddr_storage ss;
    socklen_t ss_len = sizeof ss;
    char port_str[16];
    int one = 1, fd = -1, err;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(port_str, sizeof port_str, "%d", port);
    if ((err = getaddrinfo(addr, port_str, &hints, &ai)) != 0) {
        fprintf(stderr, "pibl-origin: %s: %s\n", addr, gai_strerror(err));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd, LISTEN_BACKLOG) == -1 ||
        getsockname(fd, (struct sockaddr *)&ss, &ss_len) == -1)
        goto fail;
    if (fd >= FD_SETSIZE) {
        errno = EMFILE;
        goto fail;
    }
    *real_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(ai);
    return fd;
fail:
    fprintf(stderr, "pibl-origin: %s port %d: %s\n", addr, port, strerror(errno));
    if (fd != -1)
        close(fd);
    freeaddrinfo(ai);
    return -1;
}

/* SIGINT/SIGTERM: ask the accept loop to stop. */
static void on_stop_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/*
 * Ignore SIGPIPE; block SIGINT/SIGTERM in every thread (threads inherit the
 * mask) so only pselect() in the accept loop, which unblocks them, sees
 * them. *wait_mask receives the mask pselect() should use.
 */
static void setup_signals(sigset_t *wait_mask)
{
    struct sigaction sa;
    sigset_t block;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, wait_mask);
    sigdelset(wait_mask, SIGINT);
    sigdelset(wait_mask, SIGTERM);
}

/* Print the usage text to f. */
static void usage(FILE *f)
{
    fprintf(f, "usage: pibl-origin -p PORT [-a ADDR] [-n NAME] [-r ROOT] [-l REQLOG] [-u UPLOAD_DIR]\n"
               "  -p PORT        port to listen on (0 = any free port)\n"
               "  -a ADDR        address to bind (default 127.0.0.1)\n"
               "  -n NAME        X-Backend value (default origin-PORT)\n"
               "  -r ROOT        static file root (default www)\n"
               "  -l REQLOG      append \"NAME METHOD TARGET\" per request; raw heads to REQLOG.heads\n"
               "  -u UPLOAD_DIR  where POST|PUT /_upload stores bodies (default: count only)\n");
}

/*
 * Parse argv into g_cfg. Returns 0, 1 when -h was given, -1 on bad usage
 * (message printed).
 */
static int parse_args(int argc, char **argv)
{
    int opt, have_port = 0;
    const char *name = NULL;

    g_cfg.addr = "127.0.0.1";
    g_cfg.root = "www";
    while ((opt = getopt(argc, argv, "p:a:n:r:l:u:h")) != -1) {
        switch (opt) {
        case 'p': {
            struct str_view v = { optarg, strlen(optarg) };
            unsigned long long port;
            if (parse_u64(v, 65535, &port) == -1) {
                fprintf(stderr, "pibl-origin: bad port \"%s\"\n", optarg);
                return -1;
            }
            g_cfg.port = (int)port;
            have_port = 1;
            break;
        }
        case 'a': g_cfg.addr = optarg; break;
        case 'n': name = optarg; break;
        case 'r': g_cfg.root = optarg; break;
        case 'l': g_cfg.reqlog_path = optarg; break;
        case 'u': g_cfg.upload_dir = optarg; break;
        case 'h': return 1;
        default: return -1;
        }
    }
    if (!have_port || optind != argc) {
        fprintf(stderr, "pibl-origin: %s\n", have_port ? "unexpected argument" : "-p PORT is required");
        return -1;
    }
    if (name != NULL) {
        struct str_view v = { name, strlen(name) };
        if (v.len >= MAX_NAME_BYTES || !is_token(v)) {
            fprintf(stderr, "pibl-origin: bad name \"%s\" (1..%d token characters)\n", name,
                    MAX_NAME_BYTES - 1);
            return -1;
        }
        snprintf(g_cfg.name, sizeof g_cfg.name, "%s", name);
    }
    return 0;
}

/*
 * Open the -l files and check ROOT and UPLOAD_DIR (creating UPLOAD_DIR if
 * missing). Returns 0, or -1 after printing why.
 */
static int open_files(void)
{
    char heads[MAX_PATH_BYTES];
    struct stat st;

    if (stat(g_cfg.root, &st) == -1 || !S_ISDIR(st.st_mode))
        fprintf(stderr, "pibl-origin: warning: root %s is not a directory; static files will 404\n",
                g_cfg.root);
    if (g_cfg.upload_dir != NULL && mkdir(g_cfg.upload_dir, 0755) == -1 && errno != EEXIST) {
        fprintf(stderr, "pibl-origin: %s: %s\n", g_cfg.upload_dir, strerror(errno));
        return -1;
    }
    if (g_cfg.reqlog_path == NULL)
        return 0;
    int n = snprintf(heads, sizeof heads, "%s.heads", g_cfg.reqlog_path);
    if (n < 0 || (size_t)n >= sizeof heads) {
        fprintf(stderr, "pibl-origin: %s: name too long\n", g_cfg.reqlog_path);
        return -1;
    }
    g_reqlog_fd = open(g_cfg.reqlog_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_heads_fd = open(heads, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (g_reqlog_fd == -1 || g_heads_fd == -1) {
        fprintf(stderr, "pibl-origin: %s: %s\n", g_reqlog_fd == -1 ? g_cfg.reqlog_path : heads,
                strerror(errno));
        return -1;
    }
    return 0;
}

/*
 * Wait for connections with pselect() (signals unblocked only there) and
 * hand each to a thread, until SIGINT/SIGTERM.
 */
static void accept_loop(int listen_fd, const sigset_t *wait_mask)
{
    while (!g_stop) {
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(listen_fd, &readable);
        int n = pselect(listen_fd + 1, &readable, NULL, NULL, NULL, wait_mask);
        if (n == -1)
            continue;   /* EINTR: g_stop is checked by the loop */
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EMFILE || errno == ENFILE) {
                struct timespec ts = { 0, 100 * 1000000L };
                nanosleep(&ts, NULL);   /* let threads give fds back */
            }
            continue;
        }
        start_connection(fd);
    }
}

int main(int argc, char **argv)
{
    sigset_t wait_mask;
    int listen_fd;

    int args = parse_args(argc, argv);
    if (args != 0) {
        usage(args == 1 ? stdout : stderr);
        return args == 1 ? 0 : 2;
    }
    setup_signals(&wait_mask);
    if (open_files() == -1)
        return 2;
    listen_fd = open_listener(g_cfg.addr, g_cfg.port, &g_cfg.port);
    if (listen_fd == -1)
        return 2;
    if (g_cfg.name[0] == '\0')
        snprintf(g_cfg.name, sizeof g_cfg.name, "origin-%d", g_cfg.port);
    for (size_t i = 0; i < sizeof g_digits; i++)
        g_digits[i] = (char)('0' + i % 10);
    /* fixed for the process, so a cache's If-Modified-Since can match it */
    g_last_modified = time(NULL) - LAST_MODIFIED_AGO;
    if (strchr(g_cfg.addr, ':') != NULL)
        printf("origin %s listening on [%s]:%d\n", g_cfg.name, g_cfg.addr, g_cfg.port);
    else
        printf("origin %s listening on %s:%d\n", g_cfg.name, g_cfg.addr, g_cfg.port);
    fflush(stdout);
    accept_loop(listen_fd, &wait_mask);
    close(listen_fd);
    return 0;
}
