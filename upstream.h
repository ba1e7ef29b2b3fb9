/*
 * upstream.h - backend sockets and the idle keep-alive pool (upstream.cpp):
 * connecting with fall-through over a backend's addresses, the options every
 * backend connection gets, and the pool that keeps idle connections per
 * backend for reuse (get, put, purge, flush).
 */
#ifndef PIBL_UPSTREAM_H
#define PIBL_UPSTREAM_H

#include "pibl.h"

#include <stdint.h>

#define POOL_MAX            1024   /* idle upstream connections per backend */
#define POOL_PURGE_MS       5000   /* then half of those idle this long close */

/* A backend connection of one exchange. */
struct upstream {
    int fd;                        /* -1: none */
    int backend;                   /* rr slot */
    int reused;                    /* came from the pool */
};

/* Set up the pools. Start-up only. */
void upstream_init(void);

/*
 * Open a blocking TCP connection to backend slot b within connect_ms,
 * trying its addresses in turn while they are refused or unreachable (a
 * name such as localhost may give ::1 before 127.0.0.1). Returns the fd, or
 * -1 with errno (ETIMEDOUT when an address did not answer in time).
 */
int upstream_connect(int b, int connect_ms);

/* upstream_connect() with cfg's connect_timeout, then upstream_options(). fd or -1. */
int upstream_open(const struct pibl_config *cfg, int b);

/* What every backend connection gets: backend_timeout both ways, no Nagle. */
void upstream_options(const struct pibl_config *cfg, int fd);

/* What upstream_connect_async() did. */
enum upstream_start { UPSTREAM_FAILED = -1, UPSTREAM_UP = 0, UPSTREAM_PENDING = 1 };

/*
 * Start a non-blocking connect of u->backend's address *addr_k, or of a
 * later one while they refuse at once. Returns UPSTREAM_UP (u->fd is
 * connected), UPSTREAM_PENDING (u->fd is connecting: wait for writable),
 * or UPSTREAM_FAILED with errno (none left, or out of descriptors).
 */
int upstream_connect_async(struct upstream *u, int *addr_k);

/* A connection upstream_connect_async() opened is up: blocking again, with upstream_options(). */
void upstream_ready(const struct pibl_config *cfg, int fd);

/* Close u's connection, if any (fd becomes -1). */
void upstream_close(struct upstream *u);

/*
 * Take a live idle connection to backend b from the pool, or -1. owner is
 * the event loop asking (its index), or -1 for a blocking thread. Never blocks.
 */
int upstream_pool_get(int b, int owner);

/*
 * Give fd (to backend b) to the pool; owner is the loop that will watch it
 * while idle, or -1. It is closed instead when the pool is full, during a
 * graceful stop, or when b left the config.
 */
void upstream_pool_put(int b, int fd, int owner);

/*
 * Walk the idle connections loop me pooled: visit(arg, fd) is called for
 * each, and one for which it returns 1 is closed and dropped. With purge
 * set (every POOL_PURGE_MS), half of me's entries idle that long are closed
 * first, oldest first (loop 0 also purges the blocking threads' entries).
 */
void upstream_pool_scan(int me, int purge, int64_t now_ms, int (*visit)(void *arg, int fd),
    void *arg);

/* Close the idle pooled connections to backend slot b (it left the config). */
void upstream_pool_flush(int b);

#endif
