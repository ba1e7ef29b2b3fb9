/*
 * tunnel.cpp - WebSocket tunnels, run by the event loops. After a backend's
 * 101 Switching Protocols accepted the upgrade the client asked for
 * (exchange.cpp checks that), the connection's two sockets are joined: what
 * one side sends, the other receives, in order, unparsed (RFC 9110 7.8: the
 * connection is no longer HTTP). A half-close is passed on with
 * shutdown(SHUT_WR) once its direction is drained, and the tunnel ends when
 * both directions are closed, when a socket fails, or after tunnel_timeout
 * seconds without a byte either way (ev.cpp keeps that deadline).
 *
 * Each direction reads into its own half of the connection's relay buffer
 * and reads again only once that half went out: a side that does not read
 * holds the other back in the kernel's socket buffers, never in PIBL's
 * memory. No thread waits on a tunnel.
 *
 * It never blocks: every call is MSG_DONTWAIT.
 * Limits: TUNNEL_BUF_BYTES read ahead per direction, EV_TURN_BYTES moved per
 * loop turn.
 */
#include "tunnel.h"
#include "conn.h"
#include "ev.h"
#include "exchange.h"
#include "pibl.h"
#include "rr.h"

#include <atomic>
#include <errno.h>
#include <sys/socket.h>

static std::atomic<int> g_open;    /* tunnels open now */

void
tunnel_begin(struct conn *c)
{
    c->t_up_off = c->t_up_len = 0;
    c->t_dn_off = c->t_dn_len = 0;
    c->t_ends = 0;
    c->idle_since = pibl_now_ms();
    g_open.fetch_add(1, std::memory_order_relaxed);
    rr_tunnels(c->u.backend, 1);
}

void
tunnel_end(struct conn *c)
{
    g_open.fetch_sub(1, std::memory_order_relaxed);
    rr_tunnels(c->u.backend, -1);
}

int
tunnel_open(void)
{
    return g_open.load(std::memory_order_relaxed);
}

void
tunnel_watch(const struct conn *c, int fd[2], int rd[2], int wr[2])
{
    fd[0] = c->fd;
    fd[1] = c->u.fd;
    rd[0] = !(c->t_ends & TUNNEL_CLIENT_EOF) && c->t_up_len == 0;
    wr[0] = c->t_dn_len > 0;
    rd[1] = !(c->t_ends & TUNNEL_BACKEND_EOF) && c->t_dn_len == 0;
    wr[1] = c->t_up_len > 0;
}

/* One direction of a tunnel: from one socket to the other through buf. */
struct pipe_end {
    int from, to;
    char *buf;
    size_t *off, *len;
    int eof, shut;                 /* its TUNNEL_* flags */
    uint64_t *count;               /* bytes delivered */
    const char *read_err, *write_err;
};

/*
 * Move bytes along p until neither side can go on without waiting, or
 * budget bytes went. Returns the bytes moved, or -1 when a socket failed
 * (the reason in x->err).
 */
static long
pump(struct conn *c, struct pipe_end *p, size_t budget)
{
    size_t moved = 0;

    while (moved < budget) {
        if (*p->len == 0 && !(c->t_ends & p->eof)) {
            ssize_t n = recv(p->from, p->buf, TUNNEL_BUF_BYTES, MSG_DONTWAIT);
            if (n == -1 && errno == EINTR)
                continue;
            if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n == -1) {
                c->x->err = p->read_err;
                return -1;
            }
            if (n == 0) {
                c->t_ends |= p->eof;
            } else {
                *p->off = 0;
                *p->len = (size_t)n;
            }
        }
        if (*p->len > 0) {
            ssize_t n = send(p->to, p->buf + *p->off, *p->len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n == -1 && errno == EINTR)
                continue;
            if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n <= 0) {
                c->x->err = p->write_err;
                return -1;
            }
            *p->off += (size_t)n;
            *p->len -= (size_t)n;
            *p->count += (uint64_t)n;
            moved += (size_t)n;
            if (*p->len > 0)
                break;                          /* the receiver is full: wait */
        }
        if (*p->len == 0 && (c->t_ends & p->eof)) {
            if (!(c->t_ends & p->shut)) {
                shutdown(p->to, SHUT_WR);       /* pass the half-close on */
                c->t_ends |= p->shut;
            }
            break;
        }
    }
    return (long)moved;
}

int
tunnel_run(struct conn *c)
{
    struct exchange *x = c->x;
    struct pipe_end up = { c->fd, c->u.fd, c->relay, &c->t_up_off, &c->t_up_len,
        TUNNEL_CLIENT_EOF, TUNNEL_UP_SHUT, &x->up_bytes,
        "client reset the tunnel", "backend reset the tunnel" };
    struct pipe_end down = { c->u.fd, c->fd, c->relay + TUNNEL_BUF_BYTES, &c->t_dn_off,
        &c->t_dn_len, TUNNEL_BACKEND_EOF, TUNNEL_CLIENT_SHUT, &x->bytes,
        "backend reset the tunnel", "client went away" };

    long a = pump(c, &up, EV_TURN_BYTES / 2);
    long b = a == -1 ? -1 : pump(c, &down, EV_TURN_BYTES / 2);
    if (a == -1 || b == -1)
        return TUNNEL_BROKEN;
    if (a + b > 0)
        c->idle_since = pibl_now_ms();
    int both = TUNNEL_UP_SHUT | TUNNEL_CLIENT_SHUT;
    return (c->t_ends & both) == both ? TUNNEL_DONE : TUNNEL_WAIT;
}
