/*
 * http.h - HTTP/1.1 messages (http.cpp): parsing heads in place, chunked
 * framing, Content-Length, request-target and Host checks, Connection and
 * hop-by-hop lists, building heads, reason phrases, body framing and the
 * body relay between a source and a sink.
 *
 * The return convention of the whole tree, written here once:
 *   - a function returns 0, or a count (bytes consumed, a length, fields
 *     found), on success;
 *   - -1 on error: malformed input, or a failed call with errno set;
 *   - -2 when more bytes are needed (an incomplete head);
 *   - a function with more outcomes than these returns a named enum (its
 *     values are listed beside it), never a magic number and never a
 *     negated HTTP status mixed with lengths;
 *   - a function that answers a yes/no question returns 1 or 0.
 * System calls are compared with exactly -1.
 */
#ifndef PIBL_HTTP_H
#define PIBL_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Limits a peer can reach in a message (the byte caps are config keys). */
#define MAX_HEADERS          100      /* header fields in one head -> 431 */
#define MAX_CONN_TOKENS      16       /* names listed in one Connection header */
#define MAX_TRAILER_BYTES    8192     /* chunked trailer section we read and drop */
#define CK_MAX_DIGITS        15       /* significant hex digits of a chunk size: 2^60 bytes */
#define CK_MAX_SIZE_CHARS    64       /* all its digits, leading zeros too */
#define CK_MAX_EXT           1024     /* bytes of chunk extensions on one line */

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

/* Why a head was refused; http_error_status() gives the answer's status. */
enum http_error {
    HTTP_MALFORMED = -1,           /* 400 */
    HTTP_URI_TOO_LONG = -3,        /* 414 */
    HTTP_TOO_MANY_FIELDS = -4,     /* 431 */
    HTTP_BAD_VERSION = -5,         /* 505: not HTTP/1.x */
    HTTP_UNSUPPORTED = -6,         /* 501: a transfer coding other than chunked */
};

/* The status to answer for an enum http_error (400 for anything else). */
int http_error_status(int err);

/*
 * Parse a complete request head in buf[0..len) (len includes the final
 * CRLF CRLF). Leading empty lines are skipped (RFC 9112 2.2). Returns 0,
 * or an enum http_error: HTTP_MALFORMED, HTTP_URI_TOO_LONG (target over
 * max_uri), HTTP_TOO_MANY_FIELDS, HTTP_BAD_VERSION.
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
    size_t line_bytes;             /* bytes after the size on its line (BWS, extensions) */
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

/* 1 when the len bytes at x and at y are equal ignoring ASCII case (the
 * one case-insensitive comparison of names, tokens and schemes). */
static inline int
http_same_ci(const char *x, const char *y, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char a = (unsigned char)x[i], b = (unsigned char)y[i];
        if (a == b)
            continue;
        if ((a | 0x20) != (b | 0x20) || (a | 0x20) < 'a' || (a | 0x20) > 'z')
            return 0;
    }
    return 1;
}

/* 1 when a header name equals the NUL-terminated name, ignoring case. */
static inline int
http_name_is(const char *name, size_t name_len, const char *want)
{
    size_t wl = strlen(want);

    return name_len == wl && http_same_ci(name, want, wl);
}

/* 1 when a request method equals the NUL-terminated want, case included:
 * methods are case-sensitive (RFC 9110 9.1), so "get" is an unknown method,
 * not GET. */
static inline int
http_method_is(const char *method, size_t method_len, const char *want)
{
    size_t wl = strlen(want);

    return method_len == wl && memcmp(method, want, wl) == 0;
}

/* The first field called name, or NULL. */
const struct http_header *http_find_field(const struct http_header *hdrs, int n, const char *name);

/* How many fields are called name (0, 1, or more); *out is the first one. */
int http_find_single(const struct http_header *hdrs, int n, const char *name,
    const struct http_header **out);

/*
 * Next element of a comma-separated field value (RFC 9110 5.6.1) at *p:
 * skips commas and blanks, then takes the bytes up to one of stops. Returns
 * the element's length with *elem at its start, and leaves *p on the byte
 * that ended it; 0 at the end of the list, or when a stop byte begins it.
 */
size_t http_list_next(const char **p, const char *end, const char *stops, const char **elem);

/* Names listed in Connection fields, to drop along with them (RFC 9110 7.6.1). */
struct http_tokens {
    int close;                     /* "close" listed */
    int keep_alive;                /* "keep-alive" listed */
    int upgrade;                   /* "upgrade" listed (also kept in name[]) */
    int n;
    const char *name[MAX_CONN_TOKENS];
    size_t len[MAX_CONN_TOKENS];
};

/* Read every Connection field of a head into ct (past MAX_CONN_TOKENS names: dropped). */
void http_scan_connection(const struct http_header *hdrs, int n_hdrs, struct http_tokens *ct);

/*
 * 1 when a field name holds '_' and, read with '-' for each '_', names a
 * field that frames or routes a message (Content_Length, Transfer_Encoding,
 * X_Forwarded_For, ...): a CGI, WSGI or Rack gateway would read it as that
 * field, so it is never forwarded, in either direction.
 */
int http_is_lookalike(const char *name, size_t len);

/* 1 when a field called name (a comma-separated list, maybe over several
 * lines) has token among its members, ignoring case; 0 otherwise. */
int http_list_has(const struct http_header *hdrs, int n, const char *name, const char *token);

/* 1 for a hop-by-hop field that must not be forwarded in either direction:
 * the fixed ones, Proxy-*, and those the Connection tokens ct name, except
 * Content-Length and Host, which a Connection option never removes. */
int http_is_hop_by_hop(const struct http_header *h, const struct http_tokens *ct);

/*
 * Transfer-Encoding of a request, all its fields read as one list (RFC 9112
 * 6.1, 6.3). Returns 0 for exactly "chunked"; HTTP_MALFORMED when chunked
 * is missing, not last, or there twice (the framing is then unknowable);
 * HTTP_UNSUPPORTED for any other coding (PIBL decodes only chunked).
 */
int http_check_transfer_coding(const struct http_header *hdrs, int n);

/* 1 when every byte of a request-target is allowed by RFC 3986 (see http.cpp). */
int http_valid_target(const char *t, size_t len);

/* 1 when a Host value is uri-host [ ":" port ] (RFC 9110 7.2). */
int http_valid_host(const char *h, size_t len);

/* The reason phrase PIBL sends with one of its own statuses ("Error" if unknown). */
const char *http_reason_phrase(int status);

/* The value of a hex digit (chunk sizes, percent-escapes), or -1. */
int http_hex_value(unsigned char c);

/* ---------------------------------------------------------------- bodies */

/* How a body is delimited (RFC 9112 6.3). */
enum http_body_kind { HTTP_BODY_NONE, HTTP_BODY_LENGTH, HTTP_BODY_CHUNKED, HTTP_BODY_CLOSE };

struct http_body {
    int kind;                      /* enum http_body_kind */
    uint64_t remaining;            /* HTTP_BODY_LENGTH: bytes still to come */
    struct http_chunked ck;        /* HTTP_BODY_CHUNKED: decoder state */
};

/*
 * Frame an answer (RFC 9112 6.3): is_head says it answers a HEAD. Returns
 * 0 with bi set, or -1 when the framing is ambiguous (both Content-Length
 * and Transfer-Encoding, duplicates, a coding other than chunked).
 */
int http_framing(int is_head, const struct http_response *resp, struct http_body *bi);

/* Why a source stopped early (http_source.error after http_body_read() -1). */
enum http_source_error { HTTP_SRC_EOF = 1, HTTP_SRC_IO, HTTP_SRC_BAD };

/* A byte source: a socket with the unread bytes already buffered for it. */
struct http_source {
    int fd;
    char *buf;                     /* staging buffer (a head buffer) */
    size_t cap;
    size_t off;                    /* unread bytes are buf[off .. off+len) */
    size_t len;
    int64_t rate_from_us;          /* 0, or when a minimum rate starts to apply */
    int min_rate;                  /* bytes/s the body must average after that */
    uint64_t got;                  /* body bytes read, for the rate */
    int error;                     /* enum http_source_error, after a -1 */
};

/*
 * Next piece of body. Returns the byte count with *data pointing at it
 * (into the source's buffer or into dst), 0 at the end of the body, or -1
 * with s->error: HTTP_SRC_EOF when the peer closed early, HTTP_SRC_IO on a
 * socket error or timeout (errno kept), HTTP_SRC_BAD on broken chunked
 * framing. Blocks in recv() (the socket's timeout bounds it).
 */
long http_body_read(struct http_source *s, struct http_body *bi, char *dst, size_t dst_cap,
    const char **data);

/* A byte sink: a socket, the framing to write, and a head not yet sent. */
struct http_sink {
    int fd;
    int chunked;                   /* 1: write chunks */
    const char *head;              /* sent with the first body bytes */
    size_t head_len;
    uint64_t bytes;                /* body bytes written */
    /* Also given every body byte (a cache entry being stored), or NULL.
     * A tee that returns -1 is dropped: the sink sets it to NULL. */
    int (*tee)(void *arg, const char *data, size_t len);
    void *tee_arg;
};

/* Write len body bytes (with the pending head, in one writev). 0 or -1. */
int http_sink_write(struct http_sink *k, const char *data, size_t len);

/* Finish the message: pending head and, when chunked, the last chunk. 0 or -1. */
int http_sink_finish(struct http_sink *k);

/* What http_relay_body() ran into. */
enum http_relay {
    HTTP_RELAY_OK = 0, HTTP_RELAY_SRC_EOF, HTTP_RELAY_SRC_ERR, HTTP_RELAY_SRC_BAD,
    HTTP_RELAY_SINK_ERR, HTTP_RELAY_TOO_BIG,
};

/*
 * Move a whole body from s to k through buf, re-framing it. limit > 0 caps
 * the body size. Returns an enum http_relay; on HTTP_RELAY_OK the sink has
 * been finished. Blocks (socket timeouts bound it).
 */
int http_relay_body(struct http_source *s, struct http_body *bi, struct http_sink *k, char *buf,
    size_t cap, uint64_t limit);

/* ---------------------------------------------------------------- building heads */

/* A bounded string builder for heads and log lines; overflow sticks. */
struct http_builder {
    char *buf;
    size_t cap;
    size_t len;
    int overflow;
};

/* Append len bytes, or set overflow when they do not fit (nothing is cut). */
static inline void
http_put(struct http_builder *b, const char *s, size_t len)
{
    if (b->overflow || b->len + len > b->cap) {
        b->overflow = 1;
        return;
    }
    memcpy(b->buf + b->len, s, len);
    b->len += len;
}

static inline void
http_puts(struct http_builder *b, const char *s)
{
    http_put(b, s, strlen(s));
}

/* Decimal digits of v, without printf (one per answer head and log line). */
void http_put_num(struct http_builder *b, unsigned long long v);
void http_put_long(struct http_builder *b, long v);

/* An answer's status line up to its reason phrase: "HTTP/1.1 200 ". */
void http_put_status(struct http_builder *b, int status);

/* A log field: as much of s as fits; a cut sets overflow. */
void http_put_cut(struct http_builder *b, const char *s);

/* "name: value\r\n". */
void http_put_field(struct http_builder *b, const char *name, size_t name_len, const char *value,
    size_t value_len);

/* A received field, forwarded: as it came, except Content-Length, which goes
 * out in canonical decimal (no leading zeros, RFC 9110 8.6). */
void http_put_forward(struct http_builder *b, const struct http_header *h);

/* 1 when an answer with this status may carry Content-Length: never a 1xx
 * or a 204 (RFC 9110 8.6). */
static inline int
http_status_has_length(int status)
{
    return status >= 200 && status != 204;
}

/* An answer's status line and the fields to pass on (neither hop-by-hop
 * nor look-alikes), each with http_put_forward; no blank line. */
void http_put_answer_head(struct http_builder *b, const struct http_response *resp);

#endif
