/*
 * loop.h - the event-loop threads (loop.cpp): a few worker loops (one per
 * core) each with select() over bitmaps of its own, and the parking loop
 * that watches idle keep-alive connections without buffers; the hand-over
 * of connections between threads (an inbox and a wake pipe per loop); the
 * accept and reject paths.
 */
#ifndef PIBL_LOOP_H
#define PIBL_LOOP_H

#include <sys/socket.h>

#define MAX_LOOPS            64       /* worker loops, at most one per core */
#define REJECT_MAX           256      /* turned-away connections lingering at once */

struct conn;
struct loop;

/* Start the worker loops and the parking loop. Start-up only. 0 or -1 (errno). */
int loop_init(void);

/*
 * Take a new client connection: an event loop serves it from now on and
 * closes fd in the end (then calls pibl_conn_closed). Returns 0, or -1 when
 * out of memory (fd is left to the caller).
 */
int loop_accept(int fd, const struct sockaddr_storage *peer);

/* Send a short error answer on a fresh connection and close it, after
 * draining its input for up to LINGER_MS (accept path; never blocks). */
void loop_reject(int fd, int status, const char *why);

/* Hand c to a worker loop: new, back from a blocking thread or from the park. */
void loop_give(struct conn *c);

/* Hand a new tunnel to a worker loop (tunnel_begin done, both sockets
 * non-blocking). */
void loop_give_tunnel(struct conn *c);

/* Loop l's scratch buffer for its tunnels' reads (TUNNEL_BUF_BYTES). */
char *loop_scratch(struct loop *l);

/* Hand an idle connection without buffers to the parking loop. */
void loop_park(struct conn *c);

/* Take c out of loop l's array (the calling loop's own). */
void loop_remove(struct loop *l, struct conn *c);

/* The index of loop l (the owner of what it pools). */
int loop_id(const struct loop *l);

/* Loop l sent a request to a backend this turn (see YIELD_SLOW_US). */
void loop_sent_up(struct loop *l);

/* Make every loop look at its connections now (graceful stop). */
void loop_wake_all(void);

#endif
