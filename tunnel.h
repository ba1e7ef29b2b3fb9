/*
 * tunnel.h - WebSocket tunnels (tunnel.cpp): once a backend's 101 accepted
 * the upgrade a client asked for, an event loop copies bytes between the two
 * sockets, both ways, without parsing them, until both directions are closed
 * or tunnel_timeout passes without a byte.
 */
#ifndef PIBL_TUNNEL_H
#define PIBL_TUNNEL_H

#include "conn.h"

#define TUNNEL_BUF_BYTES 32768     /* one read, and at most this much held per direction */

struct tunnel;

/* Which of a tunnel's sockets select() found ready (c->ready; 0 = unknown:
 * try every one). */
enum tunnel_ready {
    TUNNEL_READY_CLIENT_IN = 1,
    TUNNEL_READY_CLIENT_OUT = 2,
    TUNNEL_READY_UP_IN = 4,
    TUNNEL_READY_UP_OUT = 8,
};

/* What tunnel_run() says. */
enum tunnel_result {
    TUNNEL_WAIT = 0,               /* wait on tunnel_watch()'s sockets */
    TUNNEL_DONE = 1,               /* both directions closed: end it */
    TUNNEL_BROKEN = -1,            /* a socket failed: end it (the reason is kept for the log) */
};

struct exchange;

/*
 * The backend accepted the upgrade x asked for (its 101 head is
 * c->uin[0..rh_len), len bytes read; the thread that made the exchange
 * calls this, with blocking sockets): relay that head, then what each side
 * sent past its own head, and leave u open as c->u, the backend end of the
 * tunnel. Returns EXCHANGE_TUNNEL, or -1 when a side went away first (u
 * closed, x->err says which).
 */
int tunnel_accept(struct conn *c, struct exchange *x, struct upstream *u, size_t len, long rh_len,
    int64_t t_sent);

/*
 * The 101 went through on c (c->u is the backend end; the client socket is
 * non-blocking): keep what the log line needs from c->x, give the buffer
 * block back (an idle tunnel costs a few hundred bytes, not a block), and
 * count the tunnel as open. Returns 0, or -1 when out of memory (c is
 * unchanged: log and close it).
 */
int tunnel_begin(struct conn *c);

/* It ends, c about to be closed: its log line (status 101, bytes both
 * ways, the reason if any), no longer counted, its state freed. */
void tunnel_end(struct conn *c);

/* Why it is being ended from outside (tunnel_timeout, a stop), for the log. */
void tunnel_fail(struct conn *c, const char *why);

/*
 * The sockets to wait on: fd[i] for reading when rd[i], for writing when
 * wr[i] (the client is i = 0, the backend i = 1). A side is read only when
 * nothing is held for the other, so a peer that does not read holds the
 * other one back (back-pressure), never more than TUNNEL_BUF_BYTES.
 */
void tunnel_watch(const struct conn *c, int fd[2], int rd[2], int wr[2]);

/*
 * Copy what can be copied now without blocking, at most EV_TURN_BYTES a
 * turn, in the directions c->ready says can move (then clears it), reading
 * through scratch (TUNNEL_BUF_BYTES of the calling loop's); pass a
 * half-close on once its direction is drained. Sets c->idle_since when a
 * byte moved. Returns an enum tunnel_result.
 */
int tunnel_run(struct conn *c, char *scratch);

/* Tunnels open now, all backends together. */
int tunnel_open(void);

#endif
