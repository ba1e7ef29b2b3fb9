/*
 * tunnel.h - a WebSocket tunnel (tunnel.cpp): once a backend's 101 accepted
 * the upgrade a client asked for, an event loop copies bytes between the two
 * sockets, both ways, without parsing them, until both directions are closed
 * or tunnel_timeout passes without a byte.
 */
#ifndef PIBL_TUNNEL_H
#define PIBL_TUNNEL_H

#include "conn.h"

#define TUNNEL_BUF_BYTES (RELAY_BUF_BYTES / 2)  /* read ahead per direction */

/* c->t_ends: what has happened to each direction. */
enum tunnel_end {
    TUNNEL_CLIENT_EOF = 1,         /* the client sent its FIN */
    TUNNEL_UP_SHUT = 2,            /* ... and it was passed on: backend SHUT_WR */
    TUNNEL_BACKEND_EOF = 4,        /* the backend sent its FIN */
    TUNNEL_CLIENT_SHUT = 8,        /* ... and it was passed on: client SHUT_WR */
};

/* What tunnel_run() says. */
enum tunnel_result {
    TUNNEL_WAIT = 0,               /* wait on tunnel_watch()'s sockets */
    TUNNEL_DONE = 1,               /* both directions closed: end it */
    TUNNEL_BROKEN = -1,            /* a socket failed: end it (c->x->err says which) */
};

/* A tunnel starts on c (c->u is its backend end, both sockets non-blocking,
 * nothing buffered): empty buffers, counted as open for its backend. */
void tunnel_begin(struct conn *c);

/* It ends (just before c is closed): no longer counted as open. */
void tunnel_end(struct conn *c);

/*
 * The sockets to wait on: fd[i] for reading when rd[i], for writing when
 * wr[i] (the client is i = 0, the backend i = 1). A side is read only when
 * the buffer towards the other is empty, so a peer that does not read holds
 * the other one back (back-pressure), never more than TUNNEL_BUF_BYTES.
 */
void tunnel_watch(const struct conn *c, int fd[2], int rd[2], int wr[2]);

/*
 * Copy what can be copied now without blocking, both ways, at most
 * EV_TURN_BYTES a turn; pass a half-close on once its direction is drained.
 * Sets c->idle_since when a byte moved. Returns an enum tunnel_result.
 */
int tunnel_run(struct conn *c);

/* Tunnels open now, all backends together. */
int tunnel_open(void);

#endif
