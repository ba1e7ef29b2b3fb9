/*
 * exchange.cpp - one request/answer exchange with blocking I/O, under socket
 * timeouts (SO_RCVTIMEO/SO_SNDTIMEO): the request head is read into the
 * connection's fixed head buffer, parsed in place, validated strictly
 * (RFC 9112), rewritten for the backend and forwarded; bodies stream through
 * the fixed relay buffer in both directions, always decoded and re-framed.
 * A request that was not sent (connect failed) or is idempotent without a
 * body goes to the next backend when one fails; a POST is never sent twice.
 *
 * A WebSocket handshake goes to a fresh backend connection with its Upgrade;
 * only a 101 that accepts that upgrade turns the connection into a tunnel
 * (handed to an event loop, tunnel.cpp); any other 101 is a 502.
 *
 * Refused on purpose (with the status named): CONNECT (501), other upgrades
 * (dropped: the request goes on as HTTP), targets outside RFC 3986 (400),
 * Content-Length together with Transfer-Encoding and duplicate
 * Content-Length or Host (400), Transfer-Encoding in HTTP/1.0 (400),
 * Expect other than 100-continue (417), heads that grow past the head
 * buffer once rewritten (431). Not forwarded: request fields named with
 * '_' (unless underscores_in_headers), and in either direction names that
 * read as a framing or routing field with '-' for '_' (http_is_lookalike);
 * Content-Length goes out in canonical decimal.
 *
 * It does not touch the event loops nor the cache's files: the cache's part
 * of an exchange is cachepolicy.cpp's.
 * Limits: client_timeout for a request head, client_min_rate for a request
 * body (408), max_body_bytes (413), MAX_INTERIM 1xx answers, backend_timeout
 * of silence from a backend (504).
 */
#include "exchange.h"
#include "cache.h"
#include "cachepolicy.h"
#include "conn.h"
#include "freshness.h"
#include "http.h"
#include "httpdate.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"
#include "tunnel.h"
#include "upstream.h"

#include <atomic>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

static std::atomic<uint64_t> g_requests;   /* exchanges logged */

void
exchange_reset(struct exchange *x)
{
    memset(x, 0, offsetof(struct exchange, req));
    x->req.method_len = 0;
    x->req.n_headers = 0;
    x->method[0] = x->target[0] = x->host[0] = x->key[0] = '\0';
    x->ua[0] = x->referer[0] = '\0';
    /* An empty entry is fd -1 and slot -1 (a fresh block is all zeros,
     * and slot 0 is a real slot). */
    x->stale.fd = x->hit.fd = -1;
    x->stale.slot = x->hit.slot = -1;
    x->backend = -1;
    x->req_max_age = x->req_min_fresh = -1;
    x->minor = 1;
    x->t_start = pibl_now_us();
}

/* Copy a log field as received, cut to cap - 1 bytes: log.cpp escapes it
 * for the format (a head holds no NUL: the parser refuses it). */
static void
copy_field(char *dst, size_t cap, const char *src, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;

    memcpy(dst, src, n);
    dst[n] = '\0';
}

void
exchange_note_tried(struct exchange *x, int b)
{
    if (b < 0 || b >= MAX_BACKENDS)
        return;
    for (int i = 0; i < x->n_tried; i++)
        if (x->tried_order[i] == b)
            return;                             /* a stale pooled connection, tried again */
    x->tried_order[x->n_tried++] = (unsigned char)b;
}

/*
 * For the log line of a request refused before exchange_check_request():
 * its method, target and protocol as the request line at head (len bytes)
 * has them. A line "GET /" has no protocol; "GET / HTTP/2.0" keeps its own.
 */
static void
log_request_line(struct exchange *x, const char *head, size_t len)
{
    const char *eol = (const char *)memchr(head, '\n', len);
    const char *end = eol != NULL ? eol : head + len;
    if (end > head && end[-1] == '\r')
        end--;
    copy_field(x->method, sizeof x->method, x->req.method, x->req.method_len);
    x->minor = x->req.minor_version;
    const char *sp1 = (const char *)memchr(head, ' ', (size_t)(end - head));
    const char *t = sp1 != NULL ? sp1 + 1 : end;
    const char *sp2 = (const char *)memchr(t, ' ', (size_t)(end - t));
    copy_field(x->target, sizeof x->target, t, (size_t)((sp2 != NULL ? sp2 : end) - t));
    x->proto_raw = 1;
    x->proto[0] = '\0';
    if (sp2 != NULL)
        copy_field(x->proto, sizeof x->proto, sp2 + 1, (size_t)(end - sp2 - 1));
}

/*
 * One line per exchange, formatted by log.cpp by hand: the printf family
 * was a tenth of PIBL's own CPU time on small answers.
 */
void
exchange_log(const struct conn *c, const struct exchange *x)
{
    const char *tried[MAX_BACKENDS];
    struct log_access a;

    g_requests.fetch_add(1, std::memory_order_relaxed);
    if (x->cache != CACHE_NONE)
        cache_note(x->cache);
    if (x->backend >= 0 && x->from_backend)
        rr_answered(x->backend, x->status, x->sent_bytes + x->up_bytes, x->bytes);
    for (int i = 0; i < x->n_tried; i++)
        tried[i] = rr_name(x->tried_order[i]);
    a.client = c->peer;
    a.client_ip = c->peer_ip;
    a.method = x->method;
    a.target = x->target;
    a.host = x->host;
    a.backend = x->backend >= 0 ? rr_name(x->backend) : NULL;
    a.minor = x->minor;
    a.proto = x->proto_raw ? x->proto : NULL;
    a.status = x->status;
    a.bytes = x->bytes;
    a.tunnel = x->status == 101;
    a.up_bytes = x->up_bytes;
    a.us = pibl_now_us() - x->t_start;
    a.cache = cache_status_name(x->cache);
    a.ua = x->ua;
    a.referer = x->referer;
    a.tried = tried;
    a.n_tried = x->n_tried;
    a.err = x->err;
    log_access(&a);
}

int
exchange_error(struct conn *c, struct exchange *x, int status, const char *why, int keep)
{
    char body[256], head[512], date[HTTP_DATE_LEN + 1];
    int bl = snprintf(body, sizeof body, "%d %s: %s\n", status, http_reason_phrase(status), why);
    if (bl < 0 || (size_t)bl >= sizeof body)
        bl = (int)sizeof body - 1;
    if (!keep || !x->keep_alive || pibl_stopping())
        x->keep_alive = 0;
    http_format_date(time(NULL), date);
    int hl = snprintf(head, sizeof head,
        "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n",
        status, http_reason_phrase(status), date, bl, x->keep_alive ? "" : "Connection: close\r\n");
    x->status = status;
    x->from_backend = 0;
    x->err = why;
    x->bytes = x->is_head ? 0 : (uint64_t)bl;
    c->linger = !x->keep_alive;
    struct iovec iov[2] = { { head, (size_t)hl }, { body, x->is_head ? 0 : (size_t)bl } };
    return sock_writev_all(c->fd, iov, 2);
}

/* The first stretch of a keep-alive wait, before the connection shrinks. */
static int
idle_first_ms(const struct pibl_config *cfg)
{
    int ka = cfg->keepalive_timeout * 1000;

    return ka < IDLE_SHRINK_MS ? ka : IDLE_SHRINK_MS;
}

/* How read_head() ended. */
enum read_head_result {
    READ_HEAD_OK,                  /* a whole head: *head_len bytes at c->in + c->in_off */
    READ_HEAD_CLOSE,               /* client left, idle timeout, graceful stop: just close */
    READ_HEAD_IDLE,                /* no byte for IDLE_SHRINK_MS: shrink, wait on */
    READ_HEAD_ANSWER,              /* answer *status (408, 414, 431, 400), then close */
};

/*
 * Read one request head into c->in. Returns an enum read_head_result, with
 * *head_len or *status set as it says.
 */
static int
read_head(struct conn *c, struct exchange *x, long *head_len, int *status)
{
    const struct pibl_config *cfg = c->cfg;
    size_t scan = 0;
    int64_t deadline = 0;
    /* The buffer was sized by the config of its time; a reload may have
     * raised max_header_bytes since. */
    size_t cap = (size_t)cfg->max_header_bytes < c->in_cap ? (size_t)cfg->max_header_bytes :
        c->in_cap;

    for (;;) {
        /* Empty lines before a request are ignored (RFC 9112 2.2). */
        while (c->in_len >= 2 && c->in[c->in_off] == '\r' && c->in[c->in_off + 1] == '\n') {
            c->in_off += 2;
            c->in_len -= 2;
            scan = 0;
        }
        if (c->in_len > 0) {
            if (deadline == 0) {
                deadline = pibl_now_ms() + (int64_t)cfg->client_timeout * 1000;
                x->t_start = pibl_now_us();
                if (conn_begin(c) == -1)
                    return READ_HEAD_CLOSE;     /* graceful stop got here first */
            }
            long end = http_find_head_end(c->in + c->in_off, c->in_len, &scan);
            if (end > 0) {
                *head_len = end;
                return READ_HEAD_OK;
            }
            *status = 400;
            if (end == -1)
                return READ_HEAD_ANSWER;
            if (c->in_len >= cap) {
                int line_done = memchr(c->in + c->in_off, '\n', c->in_len) != NULL;
                *status = line_done ? 431 : 414;
                return READ_HEAD_ANSWER;
            }
        }
        if (c->in_off > 0 && c->in_off + c->in_len == c->in_cap) {
            memmove(c->in, c->in + c->in_off, c->in_len);
            c->in_off = 0;
        }
        if (deadline == 0) {
            if (pibl_stopping())
                return READ_HEAD_CLOSE;
            conn_set_rcv(c, idle_first_ms(cfg));
        } else {
            int64_t left = deadline - pibl_now_ms();
            *status = 408;
            if (left <= 0)
                return READ_HEAD_ANSWER;
            conn_set_rcv(c, (int)left);
        }
        size_t room = cap - c->in_len;
        if (room > c->in_cap - c->in_off - c->in_len)
            room = c->in_cap - c->in_off - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_off + c->in_len, room, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            *status = 408;
            if (c->in_len > 0)
                return READ_HEAD_ANSWER;
            return idle_first_ms(cfg) < cfg->keepalive_timeout * 1000 ? READ_HEAD_IDLE :
                READ_HEAD_CLOSE;
        }
        if (n <= 0)
            return READ_HEAD_CLOSE;
        c->in_len += (size_t)n;
    }
}

/* An error of exchange_check_request(): the status to answer, and -1. */
static int
fail(int *status, int code)
{
    *status = code;
    return -1;
}

int
exchange_check_request(const struct pibl_config *cfg, struct exchange *x, int *status,
    const char **why, const char **host, size_t *host_len, const char **path, size_t *path_len,
    struct http_tokens *ct)
{
    struct http_request *r = &x->req;
    const struct http_header *h;

    x->minor = r->minor_version;
    x->is_head = http_method_is(r->method, r->method_len, "HEAD");
    copy_field(x->method, sizeof x->method, r->method, r->method_len);
    copy_field(x->target, sizeof x->target, r->target, r->target_len);
    for (int i = 0; i < r->n_headers; i++) {   /* for the log: the first of each */
        const struct http_header *f = &r->headers[i];
        if (f->name_len == 10 && x->ua[0] == '\0' && http_name_is(f->name, 10, "user-agent"))
            copy_field(x->ua, sizeof x->ua, f->value, f->value_len);
        else if (f->name_len == 7 && x->referer[0] == '\0' && http_name_is(f->name, 7, "referer"))
            copy_field(x->referer, sizeof x->referer, f->value, f->value_len);
    }

    *path = r->target;
    *path_len = r->target_len;
    *host = NULL;
    *host_len = 0;
    if (!http_valid_target(r->target, r->target_len)) {
        *why = "bad character in request target";
        return fail(status, 400);
    }
    if (http_method_is(r->method, r->method_len, "CONNECT")) {
        *why = "CONNECT is not supported";
        return fail(status, 501);
    }
    if (r->target[0] == '*') {
        if (r->target_len != 1 || !http_method_is(r->method, r->method_len, "OPTIONS")) {
            *why = "bad request target";
            return fail(status, 400);
        }
    } else if (r->target[0] != '/') {
        /* absolute-form (RFC 9112 3.2.2): its authority replaces Host. */
        const char *t = r->target, *end = t + r->target_len;
        size_t skip = 0;
        if (r->target_len > 7 && http_same_ci(t, "http://", 7))
            skip = 7;
        else if (r->target_len > 8 && http_same_ci(t, "https://", 8))
            skip = 8;
        if (skip == 0) {
            *why = "bad request target";
            return fail(status, 400);
        }
        const char *a = t + skip, *slash = a;
        while (slash < end && *slash != '/' && *slash != '?')
            slash++;
        if (slash == a || !http_valid_host(a, (size_t)(slash - a))) {
            *why = "bad authority in request target";
            return fail(status, 400);
        }
        *host = a;
        *host_len = (size_t)(slash - a);
        /* An empty path goes on as "/" ("?q" as "/?q", where
         * exchange_upstream_head adds the slash), or "*" for OPTIONS
         * (RFC 9112 3.2.1, 3.2.4). */
        int options = http_method_is(r->method, r->method_len, "OPTIONS");
        *path = slash < end ? slash : options ? "*" : "/";
        *path_len = slash < end ? (size_t)(end - slash) : 1;
    }

    int nh = http_find_single(r->headers, r->n_headers, "host", &h);
    if (nh > 1) {
        *why = "duplicate Host";
        return fail(status, 400);
    }
    if (nh == 0 && x->minor == 1) {
        *why = "missing Host";
        return fail(status, 400);
    }
    if (nh == 1 && (!http_valid_host(h->value, h->value_len) ||
        (h->value_len == 0 && x->minor == 1))) {
        *why = "bad Host";
        return fail(status, 400);
    }
    if (nh == 1 && *host == NULL) {
        *host = h->value;
        *host_len = h->value_len;
    }
    if (*host != NULL)
        copy_field(x->host, sizeof x->host, *host, *host_len);

    /* Body framing, RFC 9112 6.1-6.3: refuse every ambiguous case. */
    const struct http_header *cl = NULL, *te_field = NULL;
    int ncl = http_find_single(r->headers, r->n_headers, "content-length", &cl);
    int nte = http_find_single(r->headers, r->n_headers, "transfer-encoding", &te_field);
    x->body.kind = HTTP_BODY_NONE;
    if (ncl > 1) {
        *why = "duplicate Content-Length";
        return fail(status, 400);
    }
    if (nte != 0) {
        if (ncl == 1) {
            *why = "both Content-Length and Transfer-Encoding";
            return fail(status, 400);
        }
        if (x->minor == 0) {
            *why = "Transfer-Encoding in an HTTP/1.0 request";
            return fail(status, 400);
        }
        int te = http_check_transfer_coding(r->headers, r->n_headers);
        if (te != 0) {
            *why = te == HTTP_MALFORMED ? "chunked is not the last transfer coding" :
                "unsupported transfer coding";
            return fail(status, http_error_status(te));
        }
        x->body.kind = HTTP_BODY_CHUNKED;
        http_chunked_init(&x->body.ck);
    } else if (ncl == 1) {
        long long len = http_parse_content_length(cl->value, cl->value_len);
        if (len < 0) {
            *why = "bad Content-Length";
            return fail(status, 400);
        }
        if (cfg->max_body_bytes > 0 && len > cfg->max_body_bytes) {
            *why = "request body over max_body_bytes";
            return fail(status, 413);
        }
        if (len > 0) {
            x->body.kind = HTTP_BODY_LENGTH;
            x->body.remaining = (uint64_t)len;
        }
    }

    http_scan_connection(r->headers, r->n_headers, ct);
    x->keep_alive = x->minor == 1 ? !ct->close : (ct->keep_alive && !ct->close);

    int ne = http_find_single(r->headers, r->n_headers, "expect", &h);
    if (ne != 0) {
        if (ne > 1 || !http_name_is(h->value, h->value_len, "100-continue")) {
            *why = "unsupported Expect";
            return fail(status, 417);
        }
        x->expect_continue = x->body.kind != HTTP_BODY_NONE && x->minor == 1;
    }

    static const char *const idempotent[] = { "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE" };
    for (size_t i = 0; i < sizeof idempotent / sizeof idempotent[0]; i++)
        if (http_method_is(r->method, r->method_len, idempotent[i]))
            x->retryable = x->body.kind == HTTP_BODY_NONE;

    /* A WebSocket opening handshake (RFC 6455 4.1): an HTTP/1.1 GET without a
     * body whose Connection lists "upgrade" and whose Upgrade lists
     * "websocket". Any other upgrade is dropped with the hop-by-hop fields
     * and the request goes on as plain HTTP. A tunnel is never retried. */
    if (ct->upgrade && x->minor == 1 && x->body.kind == HTTP_BODY_NONE &&
        http_method_is(r->method, r->method_len, "GET") &&
        http_list_has(r->headers, r->n_headers, "upgrade", "websocket")) {
        x->upgrade = 1;
        x->retryable = 0;
    }
    return 0;
}

/* Join the values of every field called name, then append ours. */
static void
put_joined(struct http_builder *b, const struct http_request *r, const char *name, const char *ours)
{
    int first = 1;

    http_puts(b, name);
    http_put(b, ": ", 2);
    for (int i = 0; i < r->n_headers; i++) {
        const struct http_header *h = &r->headers[i];
        if (!http_name_is(h->name, h->name_len, name) || h->value_len == 0)
            continue;
        http_put(b, h->value, h->value_len);
        http_put(b, ", ", 2);
        first = 0;
    }
    (void)first;
    http_puts(b, ours);
    http_put(b, "\r\n", 2);
}

long
exchange_upstream_head(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len, const struct http_tokens *ct, int backend)
{
    const struct pibl_config *cfg = c->cfg;
    const struct http_request *r = &x->req;
    struct http_builder b = { c->out, c->out_cap, 0, 0 };

    http_put(&b, r->method, r->method_len);
    http_put(&b, " ", 1);
    if (path_len > 0 && path[0] == '?')
        http_put(&b, "/", 1);                   /* absolute-form with an empty path */
    http_put(&b, path, path_len);
    http_puts(&b, " HTTP/1.1\r\nHost: ");
    if (host != NULL && host_len > 0)
        http_put(&b, host, host_len);
    else
        http_puts(&b, rr_address(backend));        /* HTTP/1.0 client without Host */
    http_put(&b, "\r\n", 2);
    for (int i = 0; i < r->n_headers; i++) {
        const struct http_header *h = &r->headers[i];
        if (http_is_hop_by_hop(h, ct) ||
            http_name_is(h->name, h->name_len, "host") ||
            http_name_is(h->name, h->name_len, "expect") ||
            http_name_is(h->name, h->name_len, "x-forwarded-for") ||
            http_name_is(h->name, h->name_len, "x-forwarded-proto") ||
            http_name_is(h->name, h->name_len, "via"))
            continue;
        if (memchr(h->name, '_', h->name_len) != NULL &&
            (!cfg->underscores_in_headers || http_is_lookalike(h->name, h->name_len)))
            continue;                               /* nginx: underscores_in_headers */
        http_put_forward(&b, h);
    }
    put_joined(&b, r, "X-Forwarded-For", c->peer_ip);
    http_puts(&b, "X-Forwarded-Proto: http\r\n");
    put_joined(&b, r, "Via", x->minor == 0 ? "1.0 " PIBL_NAME : "1.1 " PIBL_NAME);
    /* Surrogate-Control directives may then target us (W3C Edge Architecture). */
    put_joined(&b, r, "Surrogate-Capability", FRESHNESS_DEVICE "=\"Surrogate/1.0\"");
    if (x->body.kind == HTTP_BODY_CHUNKED)
        http_puts(&b, "Transfer-Encoding: chunked\r\n");
    http_put(&b, x->cond, x->cond_len);
    if (x->upgrade)
        http_puts(&b, "Upgrade: websocket\r\nConnection: upgrade\r\n");
    else if (!cfg->upstream_keepalive)
        http_puts(&b, "Connection: close\r\n");
    http_put(&b, "\r\n", 2);
    return b.overflow ? -1 : (long)b.len;
}

/*
 * Read a response head from the backend into c->uin (from *off; bytes
 * already there count). Returns ANSWER_OK with the head length in *head_len,
 * ANSWER_NONE_* when not one byte came, ANSWER_CUT when it stopped midway,
 * ANSWER_BAD when it is malformed or too large.
 */
static int
read_response_head(struct conn *c, int fd, size_t *len, long *head_len)
{
    size_t scan = 0;

    for (;;) {
        if (*len > 0) {
            long end = http_find_head_end(c->uin, *len, &scan);
            if (end > 0) {
                *head_len = end;
                return ANSWER_OK;
            }
            if (end == -1 || *len == c->uin_cap)
                return ANSWER_BAD;
        }
        ssize_t n = recv(fd, c->uin + *len, c->uin_cap - *len, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n > 0) {
            *len += (size_t)n;
            continue;
        }
        if (*len > 0)
            return ANSWER_CUT;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return ANSWER_NONE_TIMEOUT;
        return ANSWER_NONE_EOF;
    }
}

/* How send_request() ended. */
enum send_result {
    SEND_OK = 0,
    SEND_BACKEND_FAILED,           /* the backend took not all of it */
    SEND_CLIENT_GONE,              /* the client went away */
    SEND_CLIENT_SLOW,              /* 408: the body came too slowly */
    SEND_TOO_BIG,                  /* 413: a chunked body over max_body_bytes */
    SEND_BAD_BODY,                 /* 400: broken chunked framing from the client */
};

/* Send the request head and body to an open upstream. Returns an enum send_result. */
static int
send_request(struct conn *c, struct exchange *x, struct upstream *u, long head_len)
{
    const struct pibl_config *cfg = c->cfg;
    struct http_source src = { c->fd, c->in, c->in_cap, c->in_off, c->in_len, 0, 0, 0, 0 };
    struct http_sink k = { u->fd, x->body.kind == HTTP_BODY_CHUNKED, c->out, (size_t)head_len, 0,
        NULL, NULL };

    if (cfg->client_min_rate > 0) {
        src.rate_from_us = pibl_now_us() + (int64_t)cfg->client_timeout * 1000000;
        src.min_rate = cfg->client_min_rate;
    }

    x->sent_bytes = (uint64_t)head_len;
    if (x->body.kind == HTTP_BODY_NONE) {
        x->body_done = 1;
        return sock_write_all(u->fd, c->out, (size_t)head_len) == 0 ? SEND_OK : SEND_BACKEND_FAILED;
    }
    if (x->expect_continue && c->in_len == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (sock_write_all(c->fd, cont, sizeof cont - 1) == -1)
            return SEND_CLIENT_GONE;
    }
    conn_set_rcv(c, cfg->client_timeout * 1000);
    uint64_t limit = x->body.kind == HTTP_BODY_CHUNKED ? (uint64_t)cfg->max_body_bytes : 0;
    int rc = http_relay_body(&src, &x->body, &k, c->relay, RELAY_BUF_BYTES, limit);
    c->in_off = src.off;
    c->in_len = src.len;
    x->sent_bytes += k.bytes;
    switch (rc) {
    case HTTP_RELAY_OK:
        x->body_done = 1;
        return SEND_OK;
    case HTTP_RELAY_SINK_ERR:
        return SEND_BACKEND_FAILED;
    case HTTP_RELAY_TOO_BIG:
        return SEND_TOO_BIG;
    case HTTP_RELAY_SRC_BAD:
        return SEND_BAD_BODY;
    case HTTP_RELAY_SRC_ERR:
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT) ? SEND_CLIENT_SLOW :
            SEND_CLIENT_GONE;
    default:
        return SEND_CLIENT_GONE;
    }
}

void
exchange_put_head_end(struct http_builder *b, const struct exchange *x)
{
    if (!x->keep_alive)
        http_puts(b, "Connection: close\r\n");
    else if (x->minor == 0)
        http_puts(b, "Connection: keep-alive\r\n");
    http_put(b, "\r\n", 2);
}

long
exchange_client_head(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct, int out_chunked)
{
    struct http_builder b = { c->out, c->out_cap, 0, 0 };
    int has_date = 0, no_length = !http_status_has_length(resp->status);

    http_put_status(&b, resp->status);
    http_put(&b, resp->reason, resp->reason_len);
    http_put(&b, "\r\n", 2);
    for (int i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        if (http_is_hop_by_hop(h, ct) || http_is_lookalike(h->name, h->name_len))
            continue;
        if (freshness_is_own(h))
            continue;                           /* PIBL-Cache-Control: for PIBL only */
        if (no_length && http_name_is(h->name, h->name_len, "content-length"))
            continue;
        has_date |= http_name_is(h->name, h->name_len, "date");
        http_put_forward(&b, h);
    }
    if (!has_date)
        http_put_date(&b, time(NULL));          /* RFC 9110 6.6.1: a recipient with a clock adds it */
    cachepolicy_put_fields(&b, x);
    if (out_chunked)
        http_puts(&b, "Transfer-Encoding: chunked\r\n");
    exchange_put_head_end(&b, x);
    return b.overflow ? -1 : (long)b.len;
}

/* The sink's tee while an answer is stored: a cache that cannot keep up
 * (disk full, object too big) drops out; the client still gets every byte,
 * and the requests collapsed behind it stop waiting at once. */
struct store_tee_arg {
    struct cache_writer *cw;
    struct exchange *x;
};

static int
store_tee(void *arg, const char *data, size_t len)
{
    struct store_tee_arg *t = (struct store_tee_arg *)arg;
    if (cache_store_write(t->cw, data, len) == 0)
        return 0;
    cachepolicy_unlock(t->x);
    t->x->stored = 0;
    return -1;
}

/*
 * Relay the answer whose head sits in c->uin[0..head_len) (len bytes read)
 * to the client. Returns 0 when the whole answer went through; -1 when the
 * client connection must close (backend died mid-answer, client gone).
 * *reuse tells whether the upstream connection can go back to the pool.
 */
static int
relay_response(struct conn *c, struct exchange *x, struct upstream *u, size_t len, long head_len,
    int *reuse)
{
    const struct pibl_config *cfg = c->cfg;
    struct http_response resp;
    struct http_body bi;
    struct http_tokens ct;

    *reuse = 0;
    if (http_parse_response(c->uin, (size_t)head_len, &resp) == -1 ||
        http_framing(x->is_head, &resp, &bi) == -1) {
        exchange_error(c, x, 502, "invalid answer from backend", 1);
        return x->keep_alive ? 0 : -1;
    }
    http_scan_connection(resp.headers, resp.n_headers, &ct);
    cachepolicy_answered(x, &resp);

    /* stale-if-error: a 5xx from the backend is an error too; its body is
     * left unread, so the connection is not reused. */
    int stale = cachepolicy_stale_on_5xx(c, x, resp.status);
    if (stale != SERVE_NONE)
        return stale == SERVE_CLIENT_GONE ? -1 : 0;

    /* Our conditional request was answered 304: the stored body is current. */
    if (resp.status == 304 && cachepolicy_revalidating(x)) {
        *reuse = resp.minor_version == 1 && !ct.close && len == (size_t)head_len;
        rr_mark_up(u->backend);
        int rc = cachepolicy_refresh(c, x, &resp, &ct);
        if (rc == SERVE_NONE) {
            *reuse = 0;
            exchange_error(c, x, 502, "cache entry unreadable after revalidation", 1);
        }
        return rc == SERVE_CLIENT_GONE ? -1 : 0;
    }

    /* A HEAD's 200 updated what is stored: answered from the new entry. */
    int hs = cachepolicy_head_answered(c, x, &resp, &ct);
    if (hs != SERVE_NONE) {
        *reuse = resp.minor_version == 1 && !ct.close && len == (size_t)head_len;
        rr_mark_up(u->backend);
        return hs == SERVE_CLIENT_GONE ? -1 : 0;
    }

    struct cache_writer *cw = cachepolicy_store_begin(c, x, &resp, &ct);
    /* Requests collapsed behind this one do not wait for an answer that is
     * not stored, nor for a stream (no known length: server-sent events,
     * long polling), which may last as long as it likes. */
    if (cw == NULL || bi.kind == HTTP_BODY_CHUNKED || bi.kind == HTTP_BODY_CLOSE)
        cachepolicy_unlock(x);

    int out_chunked = 0;
    if (bi.kind == HTTP_BODY_CHUNKED || bi.kind == HTTP_BODY_CLOSE) {
        if (x->minor == 1)
            out_chunked = 1;
        else
            x->keep_alive = 0;                  /* HTTP/1.0: end by closing */
    }
    if (pibl_stopping())
        x->keep_alive = 0;
    long out_len = exchange_client_head(c, x, &resp, &ct, out_chunked);
    if (out_len == -1) {
        cache_store_abort(cw);
        exchange_error(c, x, 502, "backend answer head too large", 1);
        return x->keep_alive ? 0 : -1;
    }
    if (cfg->log_headers) {
        log_block("response from backend:", c->uin, (size_t)head_len);
        log_block("response to client:", c->out, (size_t)out_len);
    }
    x->status = resp.status;
    x->from_backend = 1;
    struct http_source src = { u->fd, c->uin, c->uin_cap, (size_t)head_len,
        len - (size_t)head_len, 0, 0, 0, 0 };
    struct store_tee_arg tee = { cw, x };
    struct http_sink k = { c->fd, out_chunked, c->out, (size_t)out_len, 0,
        cw != NULL ? store_tee : NULL, &tee };
    int rc = http_relay_body(&src, &bi, &k, c->relay, RELAY_BUF_BYTES, 0);
    x->bytes = k.bytes;
    /* A writer that failed freed itself. Only a whole answer becomes an
     * entry; a cut one leaves nothing. */
    if (k.tee == NULL)
        cw = NULL;
    if (rc == HTTP_RELAY_OK && cw != NULL)
        cache_store_commit(cw);
    else
        cache_store_abort(cw);
    if (rc == HTTP_RELAY_OK) {
        *reuse = resp.minor_version == 1 && !ct.close && bi.kind != HTTP_BODY_CLOSE && src.len == 0;
        rr_mark_up(u->backend);
        return 0;
    }
    if (rc == HTTP_RELAY_SINK_ERR) {
        x->err = "client went away";
        return -1;
    }
    /* The backend broke off: close the client so a cut body never looks
     * whole. No down mark: if the backend really died, the next connect()
     * to it fails and marks it; a single broken answer is not an outage. */
    const char *why = rc == HTTP_RELAY_SRC_BAD ? "bad chunked framing from backend" :
        rc == HTTP_RELAY_SRC_ERR ? "backend timed out mid-answer" : "backend closed mid-answer";
    if (k.head_len > 0) {
        /* Nothing reached the client yet: it can still get a clean 502. */
        x->bytes = 0;
        exchange_error(c, x, 502, why, 1);
        return x->keep_alive ? 0 : -1;
    }
    x->err = why;
    return -1;
}

int
exchange_relay_interim(struct conn *c, struct exchange *x, struct upstream *u, size_t *len,
    long *rh_len)
{
    int hr = ANSWER_OK;

    for (int interim = 0; hr == ANSWER_OK; interim++) {
        struct http_response resp;
        if (http_parse_response(c->uin, (size_t)*rh_len, &resp) == -1 || resp.status >= 200)
            break;
        if (interim == MAX_INTERIM) {
            /* Never relayed or logged as final, nor the connection pooled. */
            x->fail_why = "too many 1xx answers from backend";
            return ANSWER_BAD_WHY;
        }
        if (resp.status == 101) {
            /* Only the upgrade asked for opens a tunnel: a 101 to anything
             * else would let the client talk past PIBL's checks. */
            struct http_tokens uct;
            http_scan_connection(resp.headers, resp.n_headers, &uct);
            if (x->upgrade && uct.upgrade &&
                http_list_has(resp.headers, resp.n_headers, "upgrade", "websocket"))
                return ANSWER_UPGRADE;
            x->fail_why = x->upgrade ? "101 answer for another protocol than websocket" :
                "101 answer to a request that asked for no upgrade";
            return ANSWER_BAD_WHY;
        }
        /* Rewritten like a final head: hop-by-hop and look-alike fields out. */
        struct http_builder b = { c->out, c->out_cap, 0, 0 };
        http_put_answer_head(&b, &resp);
        http_put(&b, "\r\n", 2);
        if (b.overflow)
            return ANSWER_BAD;
        if (x->minor == 1 && sock_write_all(c->fd, c->out, b.len) == -1) {
            upstream_close(u);
            x->err = "client went away";
            return ANSWER_CLIENT_GONE;
        }
        memmove(c->uin, c->uin + *rh_len, *len - (size_t)*rh_len);
        *len -= (size_t)*rh_len;
        hr = read_response_head(c, u->fd, len, rh_len);
    }
    return hr;
}

int
exchange_relay_final(struct conn *c, struct exchange *x, struct upstream *u, size_t len,
    long rh_len, int64_t t_sent)
{
    int reuse;

    rr_record(u->backend, 1, pibl_now_us() - t_sent, NULL);
    int keep = relay_response(c, x, u, len, rh_len, &reuse);
    if (reuse && c->cfg->upstream_keepalive && keep == 0 && !x->upgrade) {
        upstream_pool_put(u->backend, u->fd, -1);
        u->fd = -1;
    }
    upstream_close(u);
    return keep;
}

int
exchange_forward(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len, const struct http_tokens *ct)
{
    const struct pibl_config *cfg = c->cfg;
    /* The event loop may have tried a backend already (see ev_up_fail). */
    uint64_t tried = x->tried;
    int fail_status = x->fail_status != 0 ? x->fail_status : 503;
    const char *fail_why = x->fail_why != NULL ? x->fail_why :
        "no backend available: every backend is down, drained or disabled";

    for (int attempt = 0; attempt <= rr_count(); attempt++) {
        int b = rr_next(tried);
        if (b == -1)
            break;
        tried |= (uint64_t)1 << b;
        x->backend = b;
        exchange_note_tried(x, b);

        long head_len = exchange_upstream_head(c, x, host, host_len, path, path_len, ct, b);
        if (head_len == -1) {
            exchange_error(c, x, 431, "request head too large once forwarded", 0);
            return -1;
        }
        if (cfg->log_headers && attempt == 0) {
            log_block("request from client:", x->req.method,
                (size_t)(c->in + c->in_off - x->req.method));
            log_block("request to backend:", c->out, (size_t)head_len);
        }
        struct upstream u = { -1, b, 0 };
        int64_t t_sent = pibl_now_us();
        if (cfg->upstream_keepalive && !x->upgrade)   /* a tunnel gets a fresh one */
            u.fd = upstream_pool_get(b, -1);
        u.reused = u.fd != -1;
        if (u.fd == -1)
            u.fd = upstream_open(cfg, b);
        if (u.fd == -1 &&
            (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
            /* Out of descriptors or memory here: not the backend's fault. */
            fail_status = 503;
            fail_why = "proxy out of file descriptors";
            x->backend = -1;
            break;
        }
        if (u.fd == -1) {
            fail_status = 502;
            fail_why = errno == ETIMEDOUT ? "backend connect timed out" : "backend unreachable";
            rr_mark_down(b, fail_why);
            rr_record(b, 0, 0, fail_why);
            continue;                           /* nothing was sent: try the next */
        }

        int rc = send_request(c, x, &u, head_len);
        if (rc == SEND_CLIENT_GONE) {
            upstream_close(&u);
            x->err = "client went away";
            return -1;
        }
        if (rc == SEND_CLIENT_SLOW || rc == SEND_TOO_BIG || rc == SEND_BAD_BODY) {
            upstream_close(&u);
            if (rc == SEND_CLIENT_SLOW)
                exchange_error(c, x, 408, "request body too slow", 0);
            else if (rc == SEND_TOO_BIG)
                exchange_error(c, x, 413, "request body over max_body_bytes", 0);
            else
                exchange_error(c, x, 400, "bad chunked request body", 0);
            return -1;
        }

        size_t len = 0;
        long rh_len = 0;
        int hr = rc == SEND_OK ? read_response_head(c, u.fd, &len, &rh_len) : ANSWER_NONE_EOF;
        if (hr == ANSWER_OK)
            hr = exchange_relay_interim(c, x, &u, &len, &rh_len);
        if (hr == ANSWER_CLIENT_GONE)
            return -1;
        if (hr == ANSWER_UPGRADE)
            return tunnel_accept(c, x, &u, len, rh_len, t_sent);
        if (hr == ANSWER_OK)
            return exchange_relay_final(c, x, &u, len, rh_len, t_sent);
        upstream_close(&u);
        if (hr == ANSWER_NONE_EOF && u.reused && x->retryable) {
            tried &= ~((uint64_t)1 << b);       /* a stale pooled connection */
            continue;
        }
        if (hr == ANSWER_BAD || hr == ANSWER_CUT || hr == ANSWER_BAD_WHY) {
            rr_record(b, 0, 0, hr == ANSWER_CUT ? "closed mid-head" : "invalid answer");
            exchange_error(c, x, 502, hr == ANSWER_BAD ? "invalid answer from backend" :
                hr == ANSWER_CUT ? "backend closed mid-head" : x->fail_why, 1);
            return x->keep_alive && x->body_done ? 0 : -1;
        }
        fail_status = hr == ANSWER_NONE_TIMEOUT ? 504 : 502;
        fail_why = hr == ANSWER_NONE_TIMEOUT ? "backend timed out" :
            "backend closed without answering";
        rr_mark_down(b, fail_why);
        rr_record(b, 0, 0, fail_why);
        if (!x->retryable)
            break;                              /* a POST is never sent twice */
    }
    if (fail_status == 503 && x->backend != -1 && rr_is_down(x->backend))
        x->backend = -1;
    /* stale-if-error (RFC 5861): an expired entry beats an error page. */
    int served = cachepolicy_stale_if_error(c, x);
    if (served == SERVE_REFUSED) {
        fail_status = 504;                      /* RFC 9111 5.2.2.2 */
        fail_why = "no backend answered and the stored answer must be revalidated";
    } else if (served != SERVE_NONE) {
        x->err = fail_why;
        return served == SERVE_OK ? 0 : -1;
    }
    exchange_error(c, x, fail_status, fail_why, 1);
    return x->keep_alive && x->body_done ? 0 : -1;
}

int
exchange_end(struct conn *c, struct exchange *x, int keep)
{
    if (keep == EXCHANGE_TUNNEL)
        return EXCHANGE_TUNNEL;                 /* logged when the tunnel ends */
    cachepolicy_end(x);
    exchange_log(c, x);
    if (keep == -1 || !x->keep_alive || !x->body_done)
        return -1;
    if (c->in_len == 0)
        c->in_off = 0;
    return 0;
}

int
exchange_serve(struct conn *c)
{
    struct exchange &x = *c->x;
    long head_len = 0;
    int st = 0;

    c->cfg = pibl_config_now();                 /* one config for the whole exchange */
    exchange_reset(&x);

    int got = read_head(c, &x, &head_len, &st);
    if (got == READ_HEAD_CLOSE)
        return EXCHANGE_CLOSE;
    if (got == READ_HEAD_IDLE)
        return EXCHANGE_IDLE;
    if (got == READ_HEAD_ANSWER) {
        exchange_error(c, &x, st, st == 408 ? "client too slow" : st == 414 ?
            "request target too long" : st == 431 ? "request head too large" :
            "malformed request head", 0);
        exchange_log(c, &x);
        return EXCHANGE_CLOSE;
    }

    const char *why = NULL, *host, *path;
    size_t host_len, path_len;
    struct http_tokens ct;
    int perr = http_parse_request(c->in + c->in_off, (size_t)head_len,
        (size_t)c->cfg->max_uri_bytes, &x.req);
    int bad = perr != 0;
    if (!bad) {
        bad = exchange_check_request(c->cfg, &x, &st, &why, &host, &host_len, &path, &path_len,
            &ct) == -1;
    } else {
        st = http_error_status(perr);
        why = perr == HTTP_URI_TOO_LONG ? "request target too long" :
            perr == HTTP_TOO_MANY_FIELDS ? "too many header fields" :
            perr == HTTP_BAD_VERSION ? "HTTP version not supported" : "malformed request head";
    }
    if (bad) {
        if (x.req.method_len > 0 && x.method[0] == '\0')
            log_request_line(&x, c->in + c->in_off, (size_t)head_len);
        exchange_error(c, &x, st, why, 0);
        exchange_log(c, &x);
        return EXCHANGE_CLOSE;
    }
    c->in_off += (size_t)head_len;
    c->in_len -= (size_t)head_len;

    x.body_done = x.body.kind == HTTP_BODY_NONE;

    int keep;
    int front = cache_enabled() && !x.upgrade ?
        cachepolicy_front(c, &x, host, host_len, path, path_len) : FRONT_FORWARD;
    if (front == FRONT_FORWARD)
        keep = exchange_forward(c, &x, host, host_len, path, path_len, &ct);
    else
        keep = front == FRONT_DONE_KEEP ? 0 : -1;
    return exchange_end(c, &x, keep);
}

uint64_t
exchange_requests_total(void)
{
    return g_requests.load(std::memory_order_relaxed);
}
