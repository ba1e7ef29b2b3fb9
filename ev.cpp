/*
 * ev.cpp - the non-blocking exchange the event loops run. The common
 * exchanges (a GET or HEAD without a body whose answer is a fresh cache
 * entry, sent with sendfile, or comes from a backend with a Content-Length)
 * go through a few states, each a non-blocking call: EV_HEAD (read a
 * request head), EV_UP_CONN and EV_UP_SEND (connect to a backend, send the
 * head), EV_UP_HEAD (read the answer head), EV_RELAY (move the body) and
 * EV_FILE (send a cache entry). Each wait has a deadline from the config
 * (client_timeout, connect_timeout, backend_timeout, keepalive_timeout).
 *
 * Everything else goes to a blocking thread (conn_hand_over) at the point
 * where it stops being common: request bodies, chunked, close-delimited and
 * 1xx answers, answers to store, expired entries, errors, failed backends.
 * The thread resumes where the loop stopped (c->resume) and gives the
 * connection back after that exchange.
 *
 * It never blocks: no call here waits on a socket.
 * Limits: EV_TURN_BYTES, EV_TURN_EXCHANGES and EV_TURN_READS per connection
 * and loop turn, MAX_WARM_BLOCKS connections keeping their buffers between
 * exchanges.
 */
#include "ev.h"
#include "cachepolicy.h"
#include "conn.h"
#include "exchange.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "pibl.h"
#include "rr.h"
#include "tunnel.h"
#include "upstream.h"

#include <errno.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* What one step of a connection's exchange did. */
enum ev_step {
    EV_WAIT,                       /* wait for its socket (or its deadline) */
    EV_AGAIN,                      /* run the next step now */
    EV_END,                        /* the exchange is done */
    EV_CLOSE,                      /* close the connection */
    EV_GONE,                       /* it left the loop (a blocking thread has it) */
};

int
ev_wait_fd(const struct conn *c, int *wr)
{
    switch (c->state) {
    case EV_UP_CONN:
    case EV_UP_SEND:
        *wr = 1;
        return c->u.fd;
    case EV_UP_HEAD:
        *wr = 0;
        return c->u.fd;
    case EV_RELAY:
        *wr = c->p1_len + c->p2_len > 0;
        return *wr ? c->fd : c->u.fd;
    case EV_FILE:
        *wr = 1;
        return c->fd;
    default:
        *wr = 0;
        return c->fd;
    }
}

/* Close from a loop: the exchange in flight (if any) is logged. */
static void
ev_close(struct loop *l, struct conn *c)
{
    if (c->state == EV_TUNNEL)
        tunnel_end(c);                          /* its log line; c->x is gone */
    else if (c->state != EV_HEAD && c->x != NULL)
        exchange_end(c, c->x, -1);
    loop_remove(l, c);
    conn_free(c);
}

/* Hand the connection to a blocking thread (c->resume says where it is). */
static int
ev_slow(struct loop *l, struct conn *c, int resume)
{
    c->resume = resume;
    c->deadline = 0;
    loop_remove(l, c);
    log_flush();                                /* its earlier lines before the thread's */
    conn_hand_over(c);
    return EV_GONE;
}

/*
 * Backend b failed without answering: mark it down, record why, and let
 * exchange_forward() try the others (what it does for its own attempts).
 */
static int
ev_blame(struct loop *l, struct conn *c, int b, int status, const char *why)
{
    struct exchange *x = c->x;

    rr_mark_down(b, why);
    x->fail_status = status;
    x->fail_why = why;
    rr_record(b, 0, 0, why);
    x->tried |= (uint64_t)1 << b;
    return ev_slow(l, c, RESUME_FORWARD);
}

/*
 * The backend failed before answering. Mirrors exchange_forward(): a stale pooled
 * connection is retried without blame; a bad or cut head is a 502; no
 * answer at all marks the backend down and the next one is tried.
 */
static int
ev_up_fail(struct loop *l, struct conn *c, int hr)
{
    struct exchange *x = c->x;
    int b = c->u.backend;

    upstream_close(&c->u);
    if (hr == ANSWER_NONE_EOF && c->u.reused)
        return ev_slow(l, c, RESUME_FORWARD);
    if (hr == ANSWER_BAD || hr == ANSWER_CUT) {
        rr_record(b, 0, 0, hr == ANSWER_BAD ? "invalid answer" : "closed mid-head");
        x->fail_why = hr == ANSWER_BAD ? "invalid answer from backend" : "backend closed mid-head";
        return ev_slow(l, c, RESUME_BAD_HEAD);
    }
    return ev_blame(l, c, b, hr == ANSWER_NONE_TIMEOUT ? 504 : 502,
        hr == ANSWER_NONE_TIMEOUT ? "backend timed out" : "backend closed without answering");
}

/* The connection to the backend failed: errno says why. */
static int
ev_connect_fail(struct loop *l, struct conn *c)
{
    int err = errno;

    upstream_close(&c->u);
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
        return ev_slow(l, c, RESUME_FORWARD);   /* ours, not the backend's: it says 503 */
    return ev_blame(l, c, c->u.backend, 502,
        err == ETIMEDOUT ? "backend connect timed out" : "backend unreachable");
}

/* Send the request to a backend chosen by round robin. */
static int
ev_forward(struct loop *l, struct conn *c)
{
    struct exchange *x = c->x;
    int b = rr_next(x->tried);

    if (b == -1)
        return ev_slow(l, c, RESUME_FORWARD);   /* none up: exchange_forward() answers */
    long head_len = exchange_upstream_head(c, x, c->host, c->host_len, c->path, c->path_len,
        &c->ct, b);
    if (head_len == -1)
        return ev_slow(l, c, RESUME_FORWARD);
    x->backend = b;
    x->sent_bytes = (uint64_t)head_len;
    exchange_note_tried(x, b);
    c->u.fd = -1;
    c->u.backend = b;
    c->u.reused = 0;
    c->u_out = 0;
    c->u_len = (size_t)head_len;                /* the head to send, until sent */
    c->t_sent = pibl_now_us();
    /* Stray bytes from a broken backend must not answer this request:
     * see upstream.cpp. One the backend closes just now is retried
     * (ev_up_fail). */
    if (c->cfg->upstream_keepalive)
        c->u.fd = upstream_pool_get(b, loop_id(l));
    c->u.reused = c->u.fd != -1;
    if (c->u.fd != -1) {
        c->state = EV_UP_SEND;
        return EV_AGAIN;
    }
    c->addr_k = 0;
    int rc = upstream_connect_async(&c->u, &c->addr_k);
    if (rc == UPSTREAM_FAILED)
        return ev_connect_fail(l, c);
    if (rc == UPSTREAM_UP)
        upstream_ready(c->cfg, c->u.fd);
    c->state = rc == UPSTREAM_UP ? EV_UP_SEND : EV_UP_CONN;
    c->deadline = pibl_now_ms() + (int64_t)c->cfg->connect_timeout * 1000;
    return rc == UPSTREAM_UP ? EV_AGAIN : EV_WAIT;
}

static int
ev_connected(struct loop *l, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->u.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        err = errno;
    if (err == 0) {
        upstream_ready(c->cfg, c->u.fd);
        c->state = EV_UP_SEND;
        return EV_AGAIN;
    }
    upstream_close(&c->u);
    c->addr_k++;                                /* a refused address: the next one */
    c->deadline = pibl_now_ms() + (int64_t)c->cfg->connect_timeout * 1000;
    int rc = upstream_connect_async(&c->u, &c->addr_k);
    if (rc == UPSTREAM_FAILED) {
        errno = err;
        return ev_connect_fail(l, c);
    }
    if (rc == UPSTREAM_UP)
        upstream_ready(c->cfg, c->u.fd);
    c->state = rc == UPSTREAM_UP ? EV_UP_SEND : EV_UP_CONN;
    return rc == UPSTREAM_UP ? EV_AGAIN : EV_WAIT;
}

static int
ev_send_up(struct loop *l, struct conn *c)
{
    while (c->u_out < c->u_len) {
        ssize_t n = send(c->u.fd, c->out + c->u_out, c->u_len - c->u_out,
            MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EV_WAIT;
        if (n <= 0)
            return ev_up_fail(l, c, ANSWER_NONE_EOF);
        c->u_out += (size_t)n;
    }
    c->state = EV_UP_HEAD;
    c->u_len = c->u_scan = 0;
    loop_sent_up(l);
    return EV_WAIT;                             /* the answer cannot be there yet */
}

/* The answer head is in c->uin: relay it here when it is plain, else hand over. */
static int
ev_response(struct loop *l, struct conn *c)
{
    struct exchange *x = c->x;
    struct http_response resp;
    struct http_body bi;
    struct http_tokens ct;

    /* 1xx, bad framing, chunked or close-delimited bodies, answers to
     * store: the blocking code (exchange_relay_interim, exchange_relay_final) does all
     * of those. */
    if (http_parse_response(c->uin, (size_t)c->u_head, &resp) == -1 || resp.status < 200 ||
        http_framing(x->is_head, &resp, &bi) == -1 || bi.kind == HTTP_BODY_CHUNKED ||
        bi.kind == HTTP_BODY_CLOSE ||
        cachepolicy_will_store(c, x, &resp) ||
        c->u_len - (size_t)c->u_head > (bi.kind == HTTP_BODY_LENGTH ? bi.remaining : 0))
        return ev_slow(l, c, RESUME_AFTER_HEAD);
    /* Not stored: requests collapsed behind this one need not wait for it. */
    cachepolicy_unlock(x);
    http_scan_connection(resp.headers, resp.n_headers, &ct);
    if (pibl_stopping())
        x->keep_alive = 0;
    long out_len = exchange_client_head(c, x, &resp, &ct, 0);
    if (out_len == -1)
        return ev_slow(l, c, RESUME_AFTER_HEAD);
    rr_record(c->u.backend, 1, pibl_now_us() - c->t_sent, NULL);
    x->status = resp.status;
    x->from_backend = 1;
    c->u_reuse = resp.minor_version == 1 && !ct.close;
    c->body_left = bi.kind == HTTP_BODY_LENGTH ? bi.remaining : 0;
    c->p1 = c->out;
    c->p1_len = (size_t)out_len;
    c->p2 = c->uin + c->u_head;
    c->p2_len = c->u_len - (size_t)c->u_head;
    c->body_left -= c->p2_len;
    c->state = EV_RELAY;
    return EV_AGAIN;
}

static int
ev_up_head(struct loop *l, struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->u.fd, c->uin + c->u_len, c->uin_cap - c->u_len, MSG_DONTWAIT);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EV_WAIT;
        if (n <= 0)
            return ev_up_fail(l, c, c->u_len > 0 ? ANSWER_CUT : ANSWER_NONE_EOF);
        c->u_len += (size_t)n;
        long end = http_find_head_end(c->uin, c->u_len, &c->u_scan);
        if (end > 0) {
            c->u_head = end;
            return ev_response(l, c);
        }
        if (end == -1 || c->u_len == c->uin_cap)
            return ev_up_fail(l, c, ANSWER_BAD);
    }
}

/*
 * Write what waits for the client (c->p1, then c->p2). Returns 0 when all
 * went, -2 when the socket is full (wait), -1 when the client is gone.
 * Bytes of p2 are body bytes when body is set.
 */
static int
ev_flush(struct conn *c, int more, int body)
{
    while (c->p1_len + c->p2_len > 0) {
        struct iovec iov[2] = { { (void *)c->p1, c->p1_len }, { (void *)c->p2, c->p2_len } };
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = c->p1_len > 0 ? iov : iov + 1;
        msg.msg_iovlen = c->p1_len > 0 ? 2 : 1;
        ssize_t n = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return -2;
        if (n <= 0)
            return -1;
        size_t w = (size_t)n, a = w < c->p1_len ? w : c->p1_len;
        c->p1 += a;
        c->p1_len -= a;
        w -= a;
        c->p2 += w;
        c->p2_len -= w;
        if (body)
            c->x->bytes += w;
    }
    return 0;
}

/* Relay a Content-Length body from the backend to the client. */
static int
ev_relay(struct loop *l, struct conn *c)
{
    struct exchange *x = c->x;
    size_t turn = 0;

    for (;; turn += c->p2_len) {
        int f = ev_flush(c, 0, 1);
        if (f == -2)
            return EV_WAIT;
        if (f == -1) {
            x->err = "client went away";
            return EV_CLOSE;
        }
        if (c->body_left == 0) {
            if (c->u_reuse && c->cfg->upstream_keepalive) {
                upstream_pool_put(c->u.backend, c->u.fd, loop_id(l));
                c->u.fd = -1;
            }
            upstream_close(&c->u);
            rr_mark_up(c->u.backend);
            return EV_END;
        }
        if (turn >= EV_TURN_BYTES)
            return EV_WAIT;
        /* The last read asks for one byte more: bytes past the body are
         * already here when the backend sent them with it, and then the
         * connection must not be pooled (a pipelined request of the same
         * turn would take it before select() sees them). */
        size_t want = c->body_left < RELAY_BUF_BYTES ? (size_t)c->body_left + 1 : RELAY_BUF_BYTES;
        ssize_t n = recv(c->u.fd, c->relay, want, MSG_DONTWAIT);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EV_WAIT;
        if (n <= 0) {
            /* Close the client so a cut body never looks whole. */
            x->err = "backend closed mid-answer";
            return EV_CLOSE;
        }
        if ((uint64_t)n > c->body_left) {
            n = (ssize_t)c->body_left;
            c->u_reuse = 0;
        }
        c->p2 = c->relay;
        c->p2_len = (size_t)n;
        c->body_left -= (uint64_t)n;
    }
}

/* Send a cache entry: the head in c->p1, then x->hit's body with sendfile. */
static int
ev_file(struct conn *c)
{
    struct exchange *x = c->x;
    int f = ev_flush(c, c->file_left > 0, 1);

    if (f == -2)
        return EV_WAIT;
    for (size_t turn = 0; f == 0 && c->file_left > 0;) {
        if (turn >= EV_TURN_BYTES)
            return EV_WAIT;
        size_t want = c->file_left > EV_TURN_BYTES ? EV_TURN_BYTES : (size_t)c->file_left;
        ssize_t n = sendfile(c->fd, x->hit.fd, &c->file_off, want);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EV_WAIT;
        if (n <= 0) {
            x->err = n == 0 ? "cache entry shrank" : "client went away";
            return EV_CLOSE;
        }
        c->file_left -= (uint64_t)n;
        x->bytes += (uint64_t)n;
        turn += (size_t)n;
    }
    if (f == -1) {
        x->err = "client went away";
        return EV_CLOSE;
    }
    return EV_END;
}

/*
 * The cache's part of a GET or HEAD in the loop: cachepolicy_front_loop()
 * decides; a hit is set up to be sent from here. Returns its enum
 * cachepolicy_loop.
 */
static int
ev_cache(struct conn *c)
{
    struct exchange *x = c->x;
    long head_len;
    uint64_t body;
    int rc = cachepolicy_front_loop(c, x, &head_len, &body);

    if (rc != LOOP_HIT)
        return rc;
    c->p1 = c->out;
    c->p1_len = (size_t)head_len;
    c->p2 = x->hit.body != NULL ? x->hit.body + x->body_from : NULL;   /* a small body, in memory */
    c->p2_len = x->hit.body != NULL ? (size_t)body : 0;
    c->file_off = x->hit.body_off + (off_t)x->body_from;  /* a range starts further in */
    c->file_left = x->hit.body != NULL ? 0 : body;
    return LOOP_HIT;
}

/* A whole request head of head_len bytes is at c->in + c->in_off. */
static int
ev_request(struct loop *l, struct conn *c, long head_len)
{
    struct exchange *x = c->x;
    const struct pibl_config *cfg = pibl_config_now();
    const char *why;
    int status;

    c->cfg = cfg;
    exchange_reset(x);
    if (c->first_byte != 0)
        x->t_start = c->first_byte * 1000;
    if (cfg->log_headers || http_parse_request(c->in + c->in_off, (size_t)head_len,
        (size_t)cfg->max_uri_bytes, &x->req) != 0 ||
        exchange_check_request(cfg, x, &status, &why, &c->host, &c->host_len, &c->path,
            &c->path_len, &c->ct) == -1 ||
        x->body.kind != HTTP_BODY_NONE || x->expect_continue || x->upgrade ||
        (!x->is_head && !http_method_is(x->req.method, x->req.method_len, "GET")))
        return ev_slow(l, c, RESUME_FRESH);     /* unparsed: the blocking code starts over */
    x->body_done = 1;
    if (pibl_stopping())
        x->keep_alive = 0;
    if (cache_enabled()) {
        int rc = ev_cache(c);
        if (rc == LOOP_HAND_OVER)
            return ev_slow(l, c, RESUME_FRESH);
        if (rc == LOOP_HIT)
            c->state = EV_FILE;
    }
    c->in_off += (size_t)head_len;
    c->in_len -= (size_t)head_len;
    return c->state == EV_FILE ? EV_AGAIN : ev_forward(l, c);
}

/* Wait for a request head; parse it when it is whole. */
static int
ev_read_head(struct loop *l, struct conn *c)
{
    size_t cap;

    if (c->in == NULL) {
        c->cfg = pibl_config_now();             /* the buffers are sized by it */
        if (!c->setup)
            conn_setup(c);
        if (conn_buffers(c) == -1)
            return EV_CLOSE;
    }
    cap = (size_t)c->cfg->max_header_bytes;
    if (cap > c->in_cap)
        cap = c->in_cap;
    for (int reads = 0;; reads++) {
        /* Empty lines before a request are ignored (RFC 9112 2.2). */
        while (c->in_len >= 2 && c->in[c->in_off] == '\r' && c->in[c->in_off + 1] == '\n') {
            c->in_off += 2;
            c->in_len -= 2;
        }
        if (c->in_len > 0) {
            size_t scan = 0;
            long end = http_find_head_end(c->in + c->in_off, c->in_len, &scan);
            if (end > 0)
                return ev_request(l, c, end);
            if (end == -1 || c->in_len >= cap)
                return ev_slow(l, c, RESUME_FRESH);     /* the blocking code answers */
            if (c->first_byte == 0)
                c->first_byte = pibl_now_ms();
        }
        if (c->in_off > 0 && c->in_off + c->in_len == c->in_cap) {
            memmove(c->in, c->in + c->in_off, c->in_len);
            c->in_off = 0;
        }
        if (reads == EV_TURN_READS)
            return EV_WAIT;                     /* what is left waits in the socket */
        size_t room = cap - c->in_len;
        if (room > c->in_cap - c->in_off - c->in_len)
            room = c->in_cap - c->in_off - c->in_len;
        ssize_t n = recv(c->fd, c->in + c->in_off + c->in_len, room, MSG_DONTWAIT);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return EV_WAIT;
        if (n <= 0)
            return EV_CLOSE;
        c->in_len += (size_t)n;
    }
}

/* When the current wait ends. */
static void
ev_set_deadline(struct conn *c)
{
    int64_t now = pibl_now_ms();
    const struct pibl_config *cfg = c->state == EV_HEAD ? pibl_config_now() : c->cfg;

    switch (c->state) {
    case EV_HEAD:
        if (c->first_byte != 0) {
            c->deadline = c->first_byte + (int64_t)cfg->client_timeout * 1000;
        } else {
            int64_t ka = c->idle_since + (int64_t)cfg->keepalive_timeout * 1000;
            int64_t shrink = c->idle_since + IDLE_SHRINK_MS;
            c->deadline = shrink < ka ? shrink : ka;
        }
        break;
    case EV_UP_CONN:
        break;                                  /* set when the connect began */
    case EV_UP_SEND:
    case EV_UP_HEAD:
        c->deadline = now + (int64_t)cfg->backend_timeout * 1000;
        break;
    case EV_RELAY:
        c->deadline = now + (int64_t)(c->p1_len + c->p2_len > 0 ? cfg->client_timeout :
            cfg->backend_timeout) * 1000;
        break;
    case EV_TUNNEL:
        c->deadline = c->idle_since + (int64_t)cfg->tunnel_timeout * 1000;
        break;
    default:
        c->deadline = now + (int64_t)cfg->client_timeout * 1000;
        break;
    }
}

/* Park an idle connection: no buffers, watched by the parking loop. */
static void
ev_park(struct loop *l, struct conn *c)
{
    loop_remove(l, c);
    conn_free_buffers(c);
    c->deadline = c->idle_since + (int64_t)pibl_config_now()->keepalive_timeout * 1000;
    loop_park(c);
}

void
ev_run(struct loop *l, struct conn *c)
{
    int served = 0;

    for (;;) {
        int rc;
        switch (c->state) {
        case EV_HEAD:
            rc = ev_read_head(l, c);
            break;
        case EV_UP_CONN:
            rc = ev_connected(l, c);
            break;
        case EV_UP_SEND:
            rc = ev_send_up(l, c);
            break;
        case EV_UP_HEAD:
            rc = ev_up_head(l, c);
            break;
        case EV_RELAY:
            rc = ev_relay(l, c);
            break;
        case EV_TUNNEL:
            rc = tunnel_run(c, loop_scratch(l)) == TUNNEL_WAIT ? EV_WAIT : EV_CLOSE;
            break;
        default:
            rc = ev_file(c);
            break;
        }
        switch (rc) {
        case EV_AGAIN:
            continue;
        case EV_WAIT:
            ev_set_deadline(c);
            return;
        case EV_GONE:
            return;
        case EV_CLOSE:
            ev_close(l, c);
            return;
        default:                                /* EV_END */
            if (exchange_end(c, c->x, 0) == -1) {
                c->state = EV_HEAD;             /* logged already */
                ev_close(l, c);
                return;
            }
            c->state = EV_HEAD;
            c->first_byte = 0;
            c->idle_since = pibl_now_ms();
            if (c->in_len == 0) {
                /* The client waits for this answer before sending more.
                 * With thousands of clients, the buffers go back now rather
                 * than after IDLE_SHRINK_MS. */
                if (conn_blocks() > MAX_WARM_BLOCKS)
                    conn_free_buffers(c);
                ev_set_deadline(c);
                return;
            }
            if (++served == EV_TURN_EXCHANGES) {
                c->again = 1;                   /* the rest after the others */
                c->first_byte = c->idle_since;  /* bytes are here: never parked */
                ev_set_deadline(c);
                return;
            }
            continue;                           /* pipelined: the next one is here */
        }
    }
}

void
ev_timeout(struct loop *l, struct conn *c)
{
    struct exchange *x = c->x;

    switch (c->state) {
    case EV_HEAD:
        if (c->first_byte != 0) {
            exchange_reset(x);
            x->t_start = c->first_byte * 1000;
            ev_slow(l, c, RESUME_408);
        } else if (pibl_stopping() ||
            pibl_now_ms() >= c->idle_since + (int64_t)pibl_config_now()->keepalive_timeout * 1000) {
            ev_close(l, c);
        } else {
            ev_park(l, c);
        }
        return;
    case EV_UP_CONN:
        errno = ETIMEDOUT;
        ev_connect_fail(l, c);
        return;
    case EV_UP_SEND:
    case EV_UP_HEAD:
        ev_up_fail(l, c, c->state == EV_UP_HEAD && c->u_len > 0 ? ANSWER_CUT : ANSWER_NONE_TIMEOUT);
        return;
    case EV_RELAY:
        x->err = c->p1_len + c->p2_len > 0 ? "client went away" : "backend timed out mid-answer";
        ev_close(l, c);
        return;
    case EV_TUNNEL:
        tunnel_fail(c, pibl_stopping() ? "tunnel cut at shutdown_timeout" : "tunnel_timeout");
        ev_close(l, c);
        return;
    default:
        x->err = "client went away";
        ev_close(l, c);
        return;
    }
}
