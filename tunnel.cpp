/*
 * tunnel.cpp - WebSocket tunnels, run by the event loops. After a backend's
 * 101 Switching Protocols accepted the upgrade the client asked for
 * (exchange.cpp checks that), tunnel_accept() relays the 101 and the bytes
 * that came with either head, and the connection's two sockets are joined: what
 * one side sends, the other receives, in order, unparsed (RFC 9110 7.8: the
 * connection is no longer HTTP). A half-close is passed on with
 * shutdown(SHUT_WR) once its direction is drained, and the tunnel ends when
 * both directions are closed, when a socket fails, or after tunnel_timeout
 * seconds without a byte either way (ev.cpp keeps that deadline).
 *
 * A tunnel gives its connection's buffer block back and keeps a small state
 * of its own: reads go through the loop's scratch buffer, and only what the
 * receiving side could not take at once is copied aside (at most one read,
 * TUNNEL_BUF_BYTES). While something is held for one side, the other side
 * is not read: a peer that does not read holds the sender back in the
 * kernel's socket buffers, never in PIBL's memory. No thread waits on a
 * tunnel.
 *
 * Only tunnel_accept() blocks: it runs in the blocking thread that made the
 * exchange, under its socket timeouts. The rest never blocks (MSG_DONTWAIT).
 * Limits: TUNNEL_BUF_BYTES held per direction, EV_TURN_BYTES moved per loop
 * turn.
 */
#include "tunnel.h"
#include "conn.h"
#include "ev.h"
#include "exchange.h"
#include "pibl.h"
#include "http.h"
#include "rr.h"
#include "sock.h"
#include "upstream.h"

#include <atomic>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* What each direction has seen (struct tunnel.ends). */
enum {
    CLIENT_EOF = 1,                /* the client sent its FIN */
    UP_SHUT = 2,                   /* ... and it was passed on: backend SHUT_WR */
    BACKEND_EOF = 4,               /* the backend sent its FIN */
    CLIENT_SHUT = 8,               /* ... and it was passed on: client SHUT_WR */
};

/* Bytes one side could not take yet. */
struct held {
    char *buf;                     /* malloc'd while something is held, else NULL */
    size_t off, len;
};

struct tunnel {
    struct held up, down;          /* towards the backend, towards the client */
    int ends;                      /* CLIENT_EOF ... */
    uint64_t up_bytes, down_bytes;
    const char *err;               /* why it broke, for the log */
    /* What the log line needs of the exchange (its buffer block is gone). */
    int64_t t_start;
    int minor, backend;
    char method[32], target[512], host[MAX_HOST_NAME];
    char *ua, *referer;            /* in the same block, after the struct */
    unsigned char tried_order[MAX_BACKENDS];   /* the exchange's, for the log line */
    int n_tried;
};

static std::atomic<int> g_open;    /* tunnels open now */

int
tunnel_accept(struct conn *c, struct exchange *x, struct upstream *u, size_t len, long rh_len,
    int64_t t_sent)
{
    struct http_response resp;
    struct http_builder b = { c->out, c->out_cap, 0, 0 };

    rr_record(u->backend, 1, pibl_now_us() - t_sent, NULL);
    x->keep_alive = 0;
    if (http_parse_response(c->uin, (size_t)rh_len, &resp) == -1) {
        upstream_close(u);
        exchange_error(c, x, 502, "invalid answer from backend", 0);
        return -1;
    }
    http_put_answer_head(&b, &resp);
    http_puts(&b, "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    if (b.overflow) {
        upstream_close(u);
        exchange_error(c, x, 502, "101 head too large once rewritten", 0);
        return -1;
    }
    x->status = 101;
    x->from_backend = 1;
    size_t early = len - (size_t)rh_len;        /* the backend's first bytes */
    struct iovec iov[2] = { { c->out, b.len }, { c->uin + rh_len, early } };
    if (sock_writev_all(c->fd, iov, early > 0 ? 2 : 1) == -1) {
        upstream_close(u);
        x->err = "client went away";
        return -1;
    }
    x->bytes += early;
    if (c->in_len > 0 && sock_write_all(u->fd, c->in + c->in_off, c->in_len) == -1) {
        upstream_close(u);
        x->err = "backend closed the tunnel";
        return -1;
    }
    x->up_bytes += c->in_len;
    c->in_off = c->in_len = 0;
    upstream_close(&c->u);                      /* none is open here; never leak one */
    c->u = *u;
    u->fd = -1;
    return EXCHANGE_TUNNEL;
}

int
tunnel_begin(struct conn *c)
{
    const struct exchange *x = c->x;
    /* User-Agent and Referer take only the room they need: a browser's
     * tunnels are many and long-lived. */
    size_t ua_len = strlen(x->ua), ref_len = strlen(x->referer);
    struct tunnel *t = (struct tunnel *)calloc(1, sizeof *t + ua_len + ref_len + 2);

    if (t == NULL)
        return -1;
    t->ua = (char *)(t + 1);
    t->referer = t->ua + ua_len + 1;
    memcpy(t->ua, x->ua, ua_len + 1);
    memcpy(t->referer, x->referer, ref_len + 1);
    memcpy(t->tried_order, x->tried_order, sizeof t->tried_order);
    t->n_tried = x->n_tried;
    t->t_start = x->t_start;
    t->minor = x->minor;
    t->backend = c->u.backend;
    t->down_bytes = x->bytes;
    t->up_bytes = x->up_bytes;
    memcpy(t->method, x->method, sizeof t->method);
    memcpy(t->target, x->target, sizeof t->target);
    memcpy(t->host, x->host, sizeof t->host);
    conn_free_buffers(c);                      /* c->x is gone from here on */
    c->t = t;
    c->idle_since = pibl_now_ms();
    g_open.fetch_add(1, std::memory_order_relaxed);
    rr_tunnels(t->backend, 1);
    return 0;
}

void
tunnel_end(struct conn *c)
{
    struct tunnel *t = c->t;
    struct exchange x;                         /* for the log line only */

    exchange_reset(&x);
    x.t_start = t->t_start;
    x.minor = t->minor;
    x.backend = t->backend;
    x.status = 101;
    x.from_backend = 1;
    x.bytes = t->down_bytes;
    x.up_bytes = t->up_bytes;
    x.err = t->err;
    memcpy(x.method, t->method, sizeof x.method);
    memcpy(x.target, t->target, sizeof x.target);
    memcpy(x.host, t->host, sizeof x.host);
    memcpy(x.ua, t->ua, strlen(t->ua) + 1);    /* copied from an x->ua: it fits */
    memcpy(x.referer, t->referer, strlen(t->referer) + 1);
    memcpy(x.tried_order, t->tried_order, sizeof x.tried_order);
    x.n_tried = t->n_tried;
    exchange_log(c, &x);
    g_open.fetch_sub(1, std::memory_order_relaxed);
    rr_tunnels(t->backend, -1);
    free(t->up.buf);
    free(t->down.buf);
    free(t);
    c->t = NULL;
}

void
tunnel_fail(struct conn *c, const char *why)
{
    c->t->err = why;
}

int
tunnel_open(void)
{
    return g_open.load(std::memory_order_relaxed);
}

void
tunnel_watch(const struct conn *c, int fd[2], int rd[2], int wr[2])
{
    const struct tunnel *t = c->t;

    fd[0] = c->fd;
    fd[1] = c->u.fd;
    rd[0] = !(t->ends & CLIENT_EOF) && t->up.len == 0;
    wr[0] = t->down.len > 0;
    rd[1] = !(t->ends & BACKEND_EOF) && t->down.len == 0;
    wr[1] = t->up.len > 0;
}

/* One direction of a tunnel: from one socket to the other. */
struct pipe_end {
    int from, to;
    struct held *held;
    int eof, shut;                 /* its flags in tunnel.ends */
    uint64_t *count;               /* bytes delivered */
    const char *read_err, *write_err;
};

/* Send what is held for p->to. Returns 1 when all went, 0 when it must
 * wait, -1 when the socket failed. */
static int
send_held(struct tunnel *t, struct pipe_end *p)
{
    struct held *h = p->held;

    while (h->len > 0) {
        ssize_t n = send(p->to, h->buf + h->off, h->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0) {
            t->err = p->write_err;
            return -1;
        }
        h->off += (size_t)n;
        h->len -= (size_t)n;
        *p->count += (uint64_t)n;
    }
    free(h->buf);
    h->buf = NULL;
    h->off = 0;
    return 1;
}

/*
 * Move bytes along p until one side would block, or budget bytes went.
 * Returns the bytes moved, or -1 when a socket failed (t->err says which).
 */
static long
pump(struct tunnel *t, struct pipe_end *p, char *scratch, size_t budget)
{
    size_t moved = 0;

    while (moved < budget) {
        if (p->held->len > 0) {
            uint64_t before = *p->count;
            int rc = send_held(t, p);
            moved += (size_t)(*p->count - before);
            if (rc != 1)
                return rc == -1 ? -1 : (long)moved;
        }
        if (t->ends & p->eof) {
            if (!(t->ends & p->shut)) {
                shutdown(p->to, SHUT_WR);       /* drained: pass the half-close on */
                t->ends |= p->shut;
            }
            break;
        }
        ssize_t n = recv(p->from, scratch, TUNNEL_BUF_BYTES, MSG_DONTWAIT);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n == -1) {
            t->err = p->read_err;
            return -1;
        }
        if (n == 0) {
            t->ends |= p->eof;
            continue;
        }
        int drained = n < TUNNEL_BUF_BYTES;       /* the socket had no more: do not ask again */
        ssize_t w = send(p->to, scratch, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            w = 0;
        if (w == -1) {
            t->err = p->write_err;
            return -1;
        }
        *p->count += (uint64_t)w;
        moved += (size_t)w;
        if (w < n) {                            /* the rest waits for the receiver */
            p->held->buf = (char *)malloc((size_t)(n - w));
            if (p->held->buf == NULL) {
                t->err = "out of memory";
                return -1;
            }
            memcpy(p->held->buf, scratch + w, (size_t)(n - w));
            p->held->off = 0;
            p->held->len = (size_t)(n - w);
            break;
        }
        if (drained)
            break;                              /* select() says when more comes */
    }
    return (long)moved;
}

int
tunnel_run(struct conn *c, char *scratch)
{
    struct tunnel *t = c->t;
    struct pipe_end up = { c->fd, c->u.fd, &t->up, CLIENT_EOF, UP_SHUT, &t->up_bytes,
        "client reset the tunnel", "backend reset the tunnel" };
    struct pipe_end down = { c->u.fd, c->fd, &t->down, BACKEND_EOF, CLIENT_SHUT, &t->down_bytes,
        "backend reset the tunnel", "client went away" };

    int r = c->ready != 0 ? c->ready : TUNNEL_READY_CLIENT_IN | TUNNEL_READY_CLIENT_OUT |
        TUNNEL_READY_UP_IN | TUNNEL_READY_UP_OUT;
    c->ready = 0;
    long a = 0, b = 0;
    if (r & (TUNNEL_READY_CLIENT_IN | TUNNEL_READY_UP_OUT))
        a = pump(t, &up, scratch, EV_TURN_BYTES / 2);
    if (a != -1 && (r & (TUNNEL_READY_UP_IN | TUNNEL_READY_CLIENT_OUT)))
        b = pump(t, &down, scratch, EV_TURN_BYTES / 2);
    if (a == -1 || b == -1)
        return TUNNEL_BROKEN;
    if (a + b > 0)
        c->idle_since = pibl_now_ms();
    return (t->ends & (UP_SHUT | CLIENT_SHUT)) == (UP_SHUT | CLIENT_SHUT) ? TUNNEL_DONE : TUNNEL_WAIT;
}
