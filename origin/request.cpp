/*
 * origin/request.cpp - pibl-origin's own request parser (kept apart from
 * PIBL's on purpose): views, the request line and header fields, framing
 * (Content-Length, chunked; Transfer-Encoding wins), request bodies decoded
 * and drained, and query parameters. It refuses obs-fold, malformed lines,
 * codings other than chunked and HTTP versions other than 1.x.
 * Limits: MAX_HEADERS fields, MAX_LINE_BYTES per chunk or trailer line,
 * MAX_TRAILER_BYTES of trailers, MAX_CHUNK_SIZE, MAX_PARAM_BYTES per value.
 */
#include "origin.h"

#include <string.h>
#include <strings.h>

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

int is_token(struct str_view v)
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

int view_eq(struct str_view v, const char *s)
{
    return strlen(s) == v.len && memcmp(v.ptr, s, v.len) == 0;
}

struct str_view view_trim(struct str_view v)
{
    while (v.len > 0 && (v.ptr[0] == ' ' || v.ptr[0] == '\t')) {
        v.ptr++;
        v.len--;
    }
    while (v.len > 0 && (v.ptr[v.len - 1] == ' ' || v.ptr[v.len - 1] == '\t'))
        v.len--;
    return v;
}

int parse_u64(struct str_view v, unsigned long long max, unsigned long long *out)
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

struct str_view header_get(const struct request *rq, const char *name)
{
    for (size_t i = 0; i < rq->n_headers; i++)
        if (view_ieq(rq->headers[i].name, name))
            return rq->headers[i].value;
    struct str_view none = { NULL, 0 };
    return none;
}

int header_has_token(const struct request *rq, const char *name, const char *token)
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

int parse_head(struct request *rq, const char *head, size_t len)
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

ssize_t body_read(struct conn *c, char *buf, size_t cap)
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

int body_drain(struct conn *c)
{
    ssize_t n;

    while ((n = body_read(c, c->io, sizeof c->io)) > 0)
        ;
    return n == 0 ? 0 : -1;
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

long url_decode(struct str_view src, char *dst, size_t cap, int plus_space)
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

long query_get(const struct request *rq, const char *key, char *out, size_t cap)
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

int query_u64(const struct request *rq, const char *key, unsigned long long def,
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

long query_header_value(const struct request *rq, const char *key, char *out, size_t cap)
{
    long n = query_get(rq, key, out, cap);

    for (long i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] >= 0x7f)
            return -2;
    return n;
}
