/*
 * http.cpp - HTTP/1.1 messages, on both sides of the proxy: heads parsed in
 * place into views (picohttpparser style), chunked framing, Content-Length,
 * request-target and Host checks, Connection and hop-by-hop lists, the
 * builder that writes heads and log lines, reason phrases, and the body
 * relay that moves a body from a source socket to a sink socket, decoded and
 * re-framed (a chunked body goes out as clean chunks; a close-delimited one
 * can reach an HTTP/1.1 client chunked).
 *
 * It does not know about connections, backends, the cache or threads: its
 * callers pass buffers, sockets and the caps to apply.
 *
 * Refused on purpose: obs-fold, bare LF or CR, NUL and other control bytes
 * in heads, versions other than HTTP/1.x, chunk sizes past CK_MAX_DIGITS
 * significant hex digits (or CK_MAX_SIZE_CHARS in all), chunk extensions outside the RFC 9112 7.1.1 grammar or past
 * CK_MAX_EXT bytes, transfer codings other than chunked (request
 * smuggling, RFC 9112 6.3 and 11.2).
 *
 * Limits: MAX_HEADERS fields per head, the caller's max_uri for the target,
 * MAX_TRAILER_BYTES of chunked trailers (read and dropped), MAX_CONN_TOKENS
 * names per Connection field (the rest are dropped).
 */
#include "http.h"
#include "pibl.h"
#include "sock.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

/* ---------------------------------------------------------------- parsing */

/*
 * RFC 9110 5.6.2 tchar: ALPHA / DIGIT / "!#$%&'*+-.^_`|~", as a bitmap of
 * the ASCII codes 0-63 and 64-127 (one shift a byte: every byte of every
 * field name goes through here).
 */
#define TCHAR_0_63   0x03ff6cfa00000000ULL
#define TCHAR_64_127 0x57ffffffc7fffffeULL

static inline int
is_tchar(unsigned char c)
{
    if (c < 64)
        return (int)((TCHAR_0_63 >> c) & 1);
    return c < 128 && ((TCHAR_64_127 >> (c - 64)) & 1);
}

/* field-vchar / SP / HTAB / obs-text: anything but CTL and DEL. */
static int
is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

long
http_find_head_end(const char *buf, size_t len, size_t *scan)
{
    size_t i = *scan, from = *scan;

    while (i < len) {
        const char *nl = (const char *)memchr(buf + i, '\n', len - i);
        if (nl == NULL)
            break;
        size_t at = (size_t)(nl - buf);
        if (at == 0 || buf[at - 1] != '\r')
            return -1;                          /* bare LF */
        if (at >= 3 && buf[at - 2] == '\n' && buf[at - 3] == '\r') {
            /* Only the head itself is checked: body bytes may hold NULs. */
            if (memchr(buf + from, '\0', at + 1 - from) != NULL)
                return -1;
            return (long)(at + 1);
        }
        i = at + 1;
    }
    if (from < len && memchr(buf + from, '\0', len - from) != NULL)
        return -1;
    *scan = len;
    return -2;
}

/*
 * Parse header lines from p up to and including the empty line that ends
 * the head. Returns 0, HTTP_MALFORMED, or HTTP_TOO_MANY_FIELDS.
 */
static int
parse_headers(const char *p, const char *end, struct http_header *hdrs, int *n_hdrs)
{
    int n = 0;

    for (;;) {
        if (end - p < 2)
            return HTTP_MALFORMED;
        if (p[0] == '\r') {
            if (p[1] != '\n')
                return HTTP_MALFORMED;
            *n_hdrs = n;
            return 0;
        }
        if (p[0] == ' ' || p[0] == '\t')
            return HTTP_MALFORMED;                         /* obs-fold, RFC 9112 5.2 */
        if (n == MAX_HEADERS)
            return HTTP_TOO_MANY_FIELDS;
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        if (p == name || p == end || *p != ':')
            return HTTP_MALFORMED;                         /* also space before colon */
        hdrs[n].name = name;
        hdrs[n].name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *value = p;
        while (p < end && *p != '\r') {
            if (!is_value_char((unsigned char)*p))
                return HTTP_MALFORMED;
            p++;
        }
        if (end - p < 2 || p[1] != '\n')
            return HTTP_MALFORMED;                         /* bare CR */
        const char *vend = p;
        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        hdrs[n].value = value;
        hdrs[n].value_len = (size_t)(vend - value);
        n++;
        p += 2;
    }
}

/* Parse "HTTP/1.x" at p; returns the minor version, HTTP_MALFORMED, or
 * HTTP_BAD_VERSION for another major version. */
static int
parse_version(const char *p, const char *end)
{
    if (end - p < 8 || memcmp(p, "HTTP/", 5) != 0)
        return HTTP_MALFORMED;
    if (p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
        return HTTP_MALFORMED;
    if (p[5] != '1')
        return HTTP_BAD_VERSION;
    return p[7] == '0' ? 0 : 1;                 /* 1.2 and up speak as 1.1 */
}

int
http_error_status(int err)
{
    switch (err) {
    case HTTP_URI_TOO_LONG: return 414;
    case HTTP_TOO_MANY_FIELDS: return 431;
    case HTTP_BAD_VERSION: return 505;
    case HTTP_UNSUPPORTED: return 501;
    }
    return 400;
}

int
http_parse_request(const char *buf, size_t len, size_t max_uri, struct http_request *req)
{
    const char *p = buf, *end = buf + len;

    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;
    req->method = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    req->method_len = (size_t)(p - req->method);
    if (req->method_len == 0 || p == end || *p != ' ')
        return HTTP_MALFORMED;
    p++;
    req->target = p;
    while (p < end && *p > 0x20 && *p < 0x7f)
        p++;
    req->target_len = (size_t)(p - req->target);
    if (req->target_len > max_uri)
        return HTTP_URI_TOO_LONG;
    if (req->target_len == 0 || p == end || *p != ' ')
        return HTTP_MALFORMED;
    p++;
    int minor = parse_version(p, end);
    if (minor < 0)
        return minor;
    req->minor_version = minor;
    p += 8;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return HTTP_MALFORMED;
    return parse_headers(p + 2, end, req->headers, &req->n_headers);
}

int
http_parse_response(const char *buf, size_t len, struct http_response *resp)
{
    const char *p = buf, *end = buf + len;
    int minor = parse_version(p, end);

    if (minor < 0)
        return -1;
    resp->minor_version = minor;
    p += 8;
    if (end - p < 5 || *p != ' ')
        return -1;
    p++;
    if (p[0] < '1' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
        return -1;
    resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    if (*p == ' ')
        p++;
    else if (*p != '\r')
        return -1;
    resp->reason = p;
    while (p < end && *p != '\r') {
        if (!is_value_char((unsigned char)*p))
            return -1;
        p++;
    }
    resp->reason_len = (size_t)(p - resp->reason);
    if (end - p < 2 || p[1] != '\n')
        return -1;
    return parse_headers(p + 2, end, resp->headers, &resp->n_headers) == 0 ? 0 : -1;
}

long long
http_parse_content_length(const char *v, size_t len)
{
    long long n = 0;
    size_t i = 0;

    if (len == 0)
        return -1;
    while (i + 1 < len && v[i] == '0')          /* leading zeros: still decimal */
        i++;
    if (len - i > 18)                           /* 18 digits cannot overflow */
        return -1;
    for (; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* ---------------------------------------------------------------- chunked */

/*
 * The chunk-size line, RFC 9112 7.1 and 7.1.1:
 *   chunk-size [ chunk-ext ] CRLF
 *   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 *   chunk-ext-name = token, chunk-ext-val = token / quoted-string
 * CK_EXT_* walk that grammar; extensions are checked, then dropped.
 */
enum {
    CK_SIZE, CK_SIZE_WS, CK_EXT_NAME0, CK_EXT_NAME, CK_EXT_NAME_WS, CK_EXT_VAL0,
    CK_EXT_TOKEN, CK_EXT_VAL_WS, CK_EXT_QUOTED, CK_EXT_PAIR, CK_EXT_QUOTE_END,
    CK_SIZE_LF, CK_DATA, CK_DATA_CR, CK_DATA_LF,
    CK_TRAILER_START, CK_TRAILER_NAME, CK_TRAILER_LINE, CK_TRAILER_LF, CK_END_LF, CK_DONE
};

void
http_chunked_init(struct http_chunked *ck)
{
    memset(ck, 0, sizeof *ck);
    ck->state = CK_SIZE;
}

int
http_chunked_done(const struct http_chunked *ck)
{
    return ck->state == CK_DONE;
}

/* One byte of a chunk extension in state *st: 0, or -1 when the grammar
 * above refuses it. A CR ends the line (CK_SIZE_LF) where the grammar
 * allows the line to end. */
static int
chunk_ext_step(int *st, unsigned char c)
{
    int ws = c == ' ' || c == '\t';

    switch (*st) {
    case CK_EXT_NAME0:                          /* after ';' */
    case CK_EXT_VAL0:                           /* after '=' */
        if (ws)
            return 0;
        if (*st == CK_EXT_VAL0 && c == '"')
            *st = CK_EXT_QUOTED;
        else if (is_tchar(c))
            *st = *st == CK_EXT_NAME0 ? CK_EXT_NAME : CK_EXT_TOKEN;
        else
            return -1;
        return 0;
    case CK_EXT_NAME:
    case CK_EXT_TOKEN:
        if (is_tchar(c))
            return 0;
        if (ws)
            *st = *st == CK_EXT_NAME ? CK_EXT_NAME_WS : CK_EXT_VAL_WS;
        else if (c == ';')
            *st = CK_EXT_NAME0;
        else if (c == '=' && *st == CK_EXT_NAME)
            *st = CK_EXT_VAL0;
        else if (c == '\r')
            *st = CK_SIZE_LF;
        else
            return -1;
        return 0;
    case CK_EXT_NAME_WS:                        /* BWS only before ';' or '=' */
    case CK_EXT_VAL_WS:
    case CK_EXT_QUOTE_END:
        if (ws)
            *st = *st == CK_EXT_NAME_WS ? CK_EXT_NAME_WS : CK_EXT_VAL_WS;
        else if (c == ';')
            *st = CK_EXT_NAME0;
        else if (c == '=' && *st == CK_EXT_NAME_WS)
            *st = CK_EXT_VAL0;
        else if (c == '\r' && *st == CK_EXT_QUOTE_END)
            *st = CK_SIZE_LF;
        else
            return -1;
        return 0;
    case CK_EXT_QUOTED:                         /* qdtext, quoted-pair, DQUOTE */
        if (c == '"')
            *st = CK_EXT_QUOTE_END;
        else if (c == '\\')
            *st = CK_EXT_PAIR;
        else if (!is_value_char(c))
            return -1;
        return 0;
    case CK_EXT_PAIR:
        if (!is_value_char(c))
            return -1;
        *st = CK_EXT_QUOTED;
        return 0;
    }
    return -1;
}

int
http_hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long
http_chunked_step(struct http_chunked *ck, const char *p, size_t len, size_t *data_len)
{
    size_t i = 0;

    *data_len = 0;
    if (ck->state == CK_DATA) {
        size_t n = len < ck->remaining ? len : (size_t)ck->remaining;
        ck->remaining -= n;
        if (ck->remaining == 0)
            ck->state = CK_DATA_CR;
        *data_len = n;
        return (long)n;
    }
    while (i < len && ck->state != CK_DATA && ck->state != CK_DONE) {
        unsigned char c = (unsigned char)p[i++];
        switch (ck->state) {
        case CK_SIZE: {
            int h = http_hex_value(c);
            if (h >= 0) {
                /* Leading zeros are allowed (RFC 9112 7.1), a 16th
                 * significant digit is not: no overflow. */
                if (++ck->n_digits > CK_MAX_SIZE_CHARS ||
                    ck->remaining >= (1ULL << (4 * (CK_MAX_DIGITS - 1))))
                    return -1;
                ck->remaining = ck->remaining * 16 + (uint64_t)h;
                break;
            }
            if (ck->n_digits == 0)
                return -1;                      /* sign, "0x", junk */
            if (c == ' ' || c == '\t')
                ck->state = CK_SIZE_WS;
            else if (c == ';')
                ck->state = CK_EXT_NAME0;
            else if (c == '\r')
                ck->state = CK_SIZE_LF;
            else
                return -1;
            ck->line_bytes = 0;
            break;
        }
        case CK_SIZE_WS:                        /* BWS is allowed only before ';' */
            if (++ck->line_bytes > CK_MAX_EXT)
                return -1;
            if (c == ';')
                ck->state = CK_EXT_NAME0;
            else if (c != ' ' && c != '\t')
                return -1;
            break;
        case CK_EXT_NAME0: case CK_EXT_NAME: case CK_EXT_NAME_WS: case CK_EXT_VAL0:
        case CK_EXT_TOKEN: case CK_EXT_VAL_WS: case CK_EXT_QUOTED: case CK_EXT_PAIR:
        case CK_EXT_QUOTE_END:
            if (++ck->line_bytes > CK_MAX_EXT || chunk_ext_step(&ck->state, c) == -1)
                return -1;
            break;
        case CK_SIZE_LF:
            if (c != '\n')
                return -1;
            ck->n_digits = 0;
            ck->state = ck->remaining == 0 ? CK_TRAILER_START : CK_DATA;
            break;
        case CK_DATA_CR:
            if (c != '\r')
                return -1;
            ck->state = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (c != '\n')
                return -1;
            ck->state = CK_SIZE;
            break;
        case CK_TRAILER_START:
            if (c == '\r')
                ck->state = CK_END_LF;
            else if (is_tchar(c))
                ck->state = CK_TRAILER_NAME;
            else
                return -1;
            break;
        case CK_TRAILER_NAME:                   /* field-name ":" as in a head */
            if (c == ':')
                ck->state = CK_TRAILER_LINE;
            else if (!is_tchar(c))
                return -1;
            break;
        case CK_TRAILER_LINE:
            if (c == '\r')
                ck->state = CK_TRAILER_LF;
            else if (!is_value_char(c))
                return -1;
            break;
        case CK_TRAILER_LF:
            if (c != '\n')
                return -1;
            ck->state = CK_TRAILER_START;
            break;
        case CK_END_LF:
            if (c != '\n')
                return -1;
            ck->state = CK_DONE;
            break;
        }
        if (ck->state >= CK_TRAILER_START && ++ck->trailer_bytes > MAX_TRAILER_BYTES)
            return -1;
    }
    return (long)i;
}

long
http_body_read(struct http_source *s, struct http_body *bi, char *dst, size_t dst_cap,
    const char **data)
{
    for (;;) {
        if (bi->kind == HTTP_BODY_NONE)
            return 0;
        if (bi->kind == HTTP_BODY_LENGTH && bi->remaining == 0)
            return 0;
        if (bi->kind == HTTP_BODY_CHUNKED && http_chunked_done(&bi->ck))
            return 0;
        if (s->len > 0) {
            if (bi->kind == HTTP_BODY_CHUNKED) {
                size_t dl;
                long used = http_chunked_step(&bi->ck, s->buf + s->off, s->len, &dl);
                if (used == -1) {
                    s->error = HTTP_SRC_BAD;
                    return -1;
                }
                *data = s->buf + s->off;
                s->off += (size_t)used;
                s->len -= (size_t)used;
                if (dl > 0)
                    return (long)dl;
                continue;
            }
            size_t n = s->len;
            if (bi->kind == HTTP_BODY_LENGTH && n > bi->remaining)
                n = (size_t)bi->remaining;
            *data = s->buf + s->off;
            s->off += n;
            s->len -= n;
            if (bi->kind == HTTP_BODY_LENGTH)
                bi->remaining -= n;
            return (long)n;
        }
        /* Nothing buffered: chunked framing is staged in the source buffer,
         * raw bytes go straight into dst, never past the end of the body. */
        char *into = dst;
        size_t want = dst_cap;
        if (bi->kind == HTTP_BODY_CHUNKED) {
            s->off = 0;
            into = s->buf;
            want = s->cap;
        } else if (bi->kind == HTTP_BODY_LENGTH && want > bi->remaining) {
            want = (size_t)bi->remaining;
        }
        /* A body dribbled a byte at a time must not hold a thread and a
         * backend connection forever (slowloris on bodies). */
        if (s->rate_from_us != 0) {
            int64_t late = pibl_now_us() - s->rate_from_us;
            if (late > 0 && s->got < (uint64_t)(late / 1000) * (uint64_t)s->min_rate / 1000) {
                errno = ETIMEDOUT;
                s->error = HTTP_SRC_IO;
                return -1;
            }
        }
        ssize_t n = recv(s->fd, into, want, 0);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            s->error = HTTP_SRC_IO;
            return -1;
        }
        s->got += (uint64_t)n;
        if (n == 0 && bi->kind == HTTP_BODY_CLOSE)
            return 0;
        if (n == 0) {
            s->error = HTTP_SRC_EOF;
            return -1;
        }
        if (bi->kind == HTTP_BODY_CHUNKED) {
            s->len = (size_t)n;
            continue;
        }
        if (bi->kind == HTTP_BODY_LENGTH)
            bi->remaining -= (uint64_t)n;
        *data = dst;
        return (long)n;
    }
}

int
http_sink_write(struct http_sink *k, const char *data, size_t len)
{
    struct iovec iov[4];
    char size_line[24];
    int n = 0;

    if (k->head_len > 0)
        iov[n++] = { (void *)k->head, k->head_len };
    if (k->chunked && len > 0) {
        int sl = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
        iov[n++] = { size_line, (size_t)sl };
    }
    if (len > 0)
        iov[n++] = { (void *)data, len };
    if (k->chunked && len > 0)
        iov[n++] = { (void *)"\r\n", 2 };
    k->head_len = 0;
    k->bytes += len;
    /* A cache that cannot keep up (disk full, object too big) drops out;
     * the client still gets every byte. */
    if (k->tee != NULL && len > 0 && k->tee(k->tee_arg, data, len) == -1)
        k->tee = NULL;
    return n == 0 ? 0 : sock_writev_all(k->fd, iov, n);
}

int
http_sink_finish(struct http_sink *k)
{
    struct iovec iov[2];
    int n = 0;

    if (k->head_len > 0)
        iov[n++] = { (void *)k->head, k->head_len };
    if (k->chunked)
        iov[n++] = { (void *)"0\r\n\r\n", 5 };
    k->head_len = 0;
    return n == 0 ? 0 : sock_writev_all(k->fd, iov, n);
}

int
http_relay_body(struct http_source *s, struct http_body *bi, struct http_sink *k, char *buf,
    size_t cap, uint64_t limit)
{
    for (;;) {
        const char *data;
        long n = http_body_read(s, bi, buf, cap, &data);
        if (n == 0)
            break;
        if (n == -1)
            return s->error == HTTP_SRC_EOF ? HTTP_RELAY_SRC_EOF :
                s->error == HTTP_SRC_BAD ? HTTP_RELAY_SRC_BAD : HTTP_RELAY_SRC_ERR;
        if (limit > 0 && k->bytes + (uint64_t)n > limit)
            return HTTP_RELAY_TOO_BIG;
        if (http_sink_write(k, data, (size_t)n) == -1)
            return HTTP_RELAY_SINK_ERR;
    }
    return http_sink_finish(k) == -1 ? HTTP_RELAY_SINK_ERR : HTTP_RELAY_OK;
}

/* ---------------------------------------------------------------- heads out */

/* Decimal digits of v, without printf (one per answer head and log line). */
void
http_put_num(struct http_builder *b, unsigned long long v)
{
    char d[24];
    size_t i = sizeof d;

    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    http_put(b, d + i, sizeof d - i);
}

void
http_put_long(struct http_builder *b, long v)
{
    if (v < 0)
        http_put(b, "-", 1);
    http_put_num(b, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v);
}

/* An answer's status line up to its reason phrase: "HTTP/1.1 200 ". */
void
http_put_status(struct http_builder *b, int status)
{
    http_puts(b, "HTTP/1.1 ");
    http_put_num(b, (unsigned long long)status);
    http_put(b, " ", 1);
}

/* A log field: as much of s as fits; a cut sets overflow. */
void
http_put_cut(struct http_builder *b, const char *s)
{
    size_t len = strlen(s), room = b->overflow ? 0 : b->cap - b->len;

    if (len > room) {
        len = room;
        b->overflow = 1;
    }
    memcpy(b->buf + b->len, s, len);
    b->len += len;
}

void
http_put_field(struct http_builder *b, const char *name, size_t name_len, const char *value,
    size_t value_len)
{
    http_put(b, name, name_len);
    http_put(b, ": ", 2);
    http_put(b, value, value_len);
    http_put(b, "\r\n", 2);
}

void
http_put_forward(struct http_builder *b, const struct http_header *h)
{
    long long n;

    if (http_name_is(h->name, h->name_len, "content-length") &&
        (n = http_parse_content_length(h->value, h->value_len)) >= 0) {
        http_puts(b, "Content-Length: ");
        http_put_num(b, (unsigned long long)n);
        http_put(b, "\r\n", 2);
        return;
    }
    http_put_field(b, h->name, h->name_len, h->value, h->value_len);
}

void
http_put_answer_head(struct http_builder *b, const struct http_response *resp)
{
    struct http_tokens ct;

    http_scan_connection(resp->headers, resp->n_headers, &ct);
    http_put_status(b, resp->status);
    http_put(b, resp->reason, resp->reason_len);
    http_put(b, "\r\n", 2);
    for (int i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        if (http_is_hop_by_hop(h, &ct) || http_is_lookalike(h->name, h->name_len))
            continue;
        if (!http_status_has_length(resp->status) &&
            http_name_is(h->name, h->name_len, "content-length"))
            continue;
        http_put_forward(b, h);
    }
}

const char *
http_reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Error";
}

size_t
http_list_next(const char **p, const char *end, const char *stops, const char **elem)
{
    const char *q = *p;

    while (q < end && (*q == ',' || *q == ' ' || *q == '\t'))
        q++;
    *elem = q;
    while (q < end && strchr(stops, *q) == NULL)
        q++;
    *p = q;
    return (size_t)(q - *elem);
}

void
http_scan_connection(const struct http_header *hdrs, int n_hdrs, struct http_tokens *ct)
{
    memset(ct, 0, sizeof *ct);
    for (int i = 0; i < n_hdrs; i++) {
        if (!http_name_is(hdrs[i].name, hdrs[i].name_len, "connection"))
            continue;
        const char *p = hdrs[i].value, *end = p + hdrs[i].value_len, *t;
        while (p < end) {
            size_t tl = http_list_next(&p, end, ", \t", &t);
            if (tl == 0)
                continue;
            if (http_name_is(t, tl, "close")) {
                ct->close = 1;
            } else if (http_name_is(t, tl, "keep-alive")) {
                ct->keep_alive = 1;
            } else {
                if (http_name_is(t, tl, "upgrade"))
                    ct->upgrade = 1;
                if (ct->n < MAX_CONN_TOKENS) {
                    ct->name[ct->n] = t;
                    ct->len[ct->n++] = tl;
                }
            }
        }
    }
}

int
http_list_has(const struct http_header *hdrs, int n, const char *name, const char *token)
{
    for (int i = 0; i < n; i++) {
        if (!http_name_is(hdrs[i].name, hdrs[i].name_len, name))
            continue;
        const char *p = hdrs[i].value, *end = p + hdrs[i].value_len, *t;
        while (p < end) {
            size_t tl = http_list_next(&p, end, ", \t", &t);
            if (tl > 0 && http_name_is(t, tl, token))
                return 1;
        }
    }
    return 0;
}

int
http_is_lookalike(const char *name, size_t len)
{
    /* Fields that frame a message or say where it comes from and goes; only
     * names with a '-' can have a look-alike ("Host" has none). */
    static const char *const framing[] = {
        "content-length", "transfer-encoding", "keep-alive", "proxy-connection",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
        "x-real-ip",
    };
    char low[32];

    if (len >= sizeof low || memchr(name, '_', len) == NULL)
        return 0;
    for (size_t i = 0; i < len; i++)
        low[i] = name[i] == '_' ? '-' : (char)tolower((unsigned char)name[i]);
    for (size_t i = 0; i < sizeof framing / sizeof framing[0]; i++)
        if (strlen(framing[i]) == len && memcmp(low, framing[i], len) == 0)
            return 1;
    return 0;
}

int
http_is_hop_by_hop(const struct http_header *h, const struct http_tokens *ct)
{
    static const struct { const char *name; size_t len; } fixed[] = {
        { "connection", 10 }, { "keep-alive", 10 }, { "te", 2 }, { "trailer", 7 },
        { "transfer-encoding", 17 }, { "upgrade", 7 },
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (h->name_len == fixed[i].len && http_same_ci(h->name, fixed[i].name, fixed[i].len))
            return 1;
    if (h->name_len >= 6 && http_same_ci(h->name, "proxy-", 6))
        return 1;
    /* Connection cannot nominate what frames or routes the message: without
     * its Content-Length the body would reach the next hop unframed, as
     * requests of their own (RFC 9110 7.6.1: such a field is never a
     * connection option). */
    if (http_name_is(h->name, h->name_len, "content-length") ||
        http_name_is(h->name, h->name_len, "host"))
        return 0;
    for (int i = 0; i < ct->n; i++)
        if (h->name_len == ct->len[i] && http_same_ci(h->name, ct->name[i], ct->len[i]))
            return 1;
    return 0;
}

int
http_find_single(const struct http_header *hdrs, int n, const char *name,
    const struct http_header **out)
{
    int found = 0;
    size_t len = strlen(name);

    for (int i = 0; i < n; i++) {
        if (hdrs[i].name_len == len && http_same_ci(hdrs[i].name, name, len)) {
            if (found == 0)
                *out = &hdrs[i];
            found++;
        }
    }
    return found;
}

int
http_check_transfer_coding(const struct http_header *hdrs, int n)
{
    int n_codings = 0, chunked_at = -1, n_chunked = 0;

    for (int i = 0; i < n; i++) {
        if (!http_name_is(hdrs[i].name, hdrs[i].name_len, "transfer-encoding"))
            continue;
        const char *p = hdrs[i].value, *end = p + hdrs[i].value_len, *t;
        while (p < end) {
            size_t tl = http_list_next(&p, end, ",; \t", &t);
            if (tl == 0) {
                if (p < end)
                    p++;                        /* parameters of a coding */
                continue;
            }
            if (http_name_is(t, tl, "chunked")) {
                chunked_at = n_codings;
                n_chunked++;
            }
            n_codings++;
            while (p < end && *p != ',')
                p++;
        }
    }
    if (n_chunked > 1 || (n_chunked == 1 && chunked_at != n_codings - 1))
        return HTTP_MALFORMED;
    if (n_codings != 1 || n_chunked != 1)
        return n_codings == 0 ? HTTP_MALFORMED : HTTP_UNSUPPORTED;
    return 0;
}

/* 1 when s[i] starts a pct-encoded "%" HEXDIG HEXDIG inside len bytes (RFC 3986 2.1). */
static int
pct_encoded(const char *s, size_t i, size_t len)
{
    return i + 2 < len && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2]);
}

/*
 * request-target characters (RFC 9112 3.2, RFC 3986): unreserved, reserved
 * but '#', and '%' followed by two hex digits. Everything else ('"', '<',
 * '>', '\\', '^', '`', '{', '|', '}', '#', a stray '%') is refused, so that
 * nothing a backend might read another way gets through.
 */
int
http_valid_target(const char *t, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == '%') {
            if (!pct_encoded(t, i, len))
                return 0;
            i += 2;
            continue;
        }
        if (!isalnum(ch) && (ch == 0 || strchr("-._~!$&'()*+,;=:@/?[]", ch) == NULL))
            return 0;
    }
    return 1;
}

/* 1 for a byte of unreserved or sub-delims (RFC 3986 2.2, 2.3). */
static int
host_char(unsigned char ch)
{
    return isalnum(ch) || (ch != 0 && strchr("-._~!$&'()*+,;=", ch) != NULL);
}

/* The inside of an IP-literal (RFC 3986 3.2.2): an IPv6 address, or
 * IPvFuture "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ). */
static int
valid_ip_literal(const char *p, size_t len)
{
    char text[INET6_ADDRSTRLEN];
    unsigned char addr[16];

    if (len > 0 && (p[0] == 'v' || p[0] == 'V')) {
        size_t i = 1;
        while (i < len && isxdigit((unsigned char)p[i]))
            i++;
        if (i == 1 || i == len || p[i] != '.' || i + 1 == len)
            return 0;
        for (i++; i < len; i++)
            if (!host_char((unsigned char)p[i]) && p[i] != ':')
                return 0;
        return 1;
    }
    if (len == 0 || len >= sizeof text)
        return 0;
    memcpy(text, p, len);
    text[len] = '\0';
    return inet_pton(AF_INET6, text, addr) == 1;
}

/* Host (RFC 9110 7.2): uri-host [ ":" port ], where uri-host is an
 * IP-literal in brackets or a reg-name / IPv4address (unreserved,
 * sub-delims, %HH), and port is digits (perhaps none). */
int
http_valid_host(const char *h, size_t len)
{
    size_t i = 0;

    if (len > 0 && h[0] == '[') {
        const char *close = (const char *)memchr(h, ']', len);
        if (close == NULL || !valid_ip_literal(h + 1, (size_t)(close - h - 1)))
            return 0;
        i = (size_t)(close - h) + 1;
    } else {
        for (; i < len && h[i] != ':'; i++) {
            unsigned char ch = (unsigned char)h[i];
            if (ch == '%') {
                if (!pct_encoded(h, i, len))
                    return 0;
                i += 2;
            } else if (!host_char(ch)) {
                return 0;
            }
        }
    }
    if (i == len)
        return 1;
    if (h[i] != ':')
        return 0;
    for (i++; i < len; i++)
        if (h[i] < '0' || h[i] > '9')
            return 0;
    return 1;
}

const struct http_header *
http_find_field(const struct http_header *hdrs, int n, const char *name)
{
    size_t len = strlen(name);

    for (int i = 0; i < n; i++)
        if (hdrs[i].name_len == len && http_same_ci(hdrs[i].name, name, len))
            return &hdrs[i];
    return NULL;
}

int
http_framing(int is_head, const struct http_response *resp, struct http_body *bi)
{
    const struct http_header *cl = NULL, *te = NULL;
    int ncl = http_find_single(resp->headers, resp->n_headers, "content-length", &cl);
    int nte = http_find_single(resp->headers, resp->n_headers, "transfer-encoding", &te);

    memset(bi, 0, sizeof *bi);
    if (ncl > 1 || nte > 1 || (ncl == 1 && nte == 1))
        return -1;
    if (ncl == 1 && http_parse_content_length(cl->value, cl->value_len) < 0)
        return -1;
    if (nte == 1 && !http_name_is(te->value, te->value_len, "chunked"))
        return -1;
    if (is_head || resp->status == 204 || resp->status == 304 || resp->status < 200) {
        bi->kind = HTTP_BODY_NONE;
    } else if (nte == 1) {
        bi->kind = HTTP_BODY_CHUNKED;
        http_chunked_init(&bi->ck);
    } else if (ncl == 1) {
        bi->remaining = (uint64_t)http_parse_content_length(cl->value, cl->value_len);
        bi->kind = bi->remaining > 0 ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
    } else {
        bi->kind = HTTP_BODY_CLOSE;
    }
    return 0;
}
