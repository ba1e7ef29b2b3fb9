/*
 * ev.h - the non-blocking exchange the event loops run (ev.cpp): a GET or
 * HEAD without a body answered from a fresh cache entry (sendfile) or by a
 * backend with a Content-Length, each step a non-blocking call, with a
 * deadline per wait. Anything else is handed to a blocking thread (conn.h)
 * at the point where it stops being common.
 */
#ifndef PIBL_EV_H
#define PIBL_EV_H

struct conn;
struct loop;

/* What a connection in a loop waits for (c->state). */
enum ev_state { EV_HEAD, EV_UP_CONN, EV_UP_SEND, EV_UP_HEAD, EV_RELAY, EV_FILE, EV_TUNNEL };

/* Body bytes one connection may move per turn, so that a fast download
 * does not hold up the rest of its loop (select() is level-triggered: it
 * comes back at once if the sockets are still ready). */
#define EV_TURN_BYTES (256 * 1024)

/* Likewise, pipelined exchanges and reads of one connection per turn. */
#define EV_TURN_EXCHANGES 16
#define EV_TURN_READS     16

/* Past this many connections holding buffers, one gives them back as soon
 * as an exchange ends (a block is about 100 KB of address space, of which a
 * small exchange touches about 28 KB). */
#define MAX_WARM_BLOCKS 2048

/* The socket c waits on in its state; *wr is 1 when it waits to write. */
int ev_wait_fd(const struct conn *c, int *wr);

/*
 * Run c in loop l until it has to wait (its deadline is then set), leaves
 * the loop (handed to a blocking thread or parked) or closes. Never blocks.
 */
void ev_run(struct loop *l, struct conn *c);

/* c's deadline passed: time it out as its state says (408, 504, park, close). */
void ev_timeout(struct loop *l, struct conn *c);

#endif
