/*
 * conn.h - a client connection's life (conn.cpp): its per-fd state, its
 * buffer block, its set-up, its close (lingering after an error answer), the
 * blocking threads a connection is handed to for the exchanges the event
 * loops do not run themselves, and the graceful stop of idle connections.
 */
#ifndef PIBL_CONN_H
#define PIBL_CONN_H

#include "http.h"
#include "pibl.h"
#include "upstream.h"

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define RELAY_BUF_BYTES      65536    /* body relay buffer per connection */
#define HEAD_EXTRA_BYTES     1024     /* room for the fields PIBL adds to a head */
#define IDLE_SHRINK_MS       1000     /* idle this long, a connection frees its memory */
#define LINGER_MS            1000     /* draining input before closing after an error */
#define LINGER_MAX_BYTES     (1 << 20)
#define BLOCK_CACHE_MAX      64       /* buffer blocks kept mapped for the next connections */
#define BLOCK_TRIM_MS        5000     /* kept blocks unused this long are unmapped */

struct exchange;

/* Where a blocking thread takes over a connection from a loop (c->resume). */
enum conn_resume {
    RESUME_FRESH,                  /* nothing done: the head (if any) is in c->in */
    RESUME_FORWARD,                /* head parsed: exchange_forward() from x->tried on */
    RESUME_AFTER_HEAD,             /* the backend's answer head is in c->uin */
    RESUME_BAD_HEAD,               /* the backend's answer was bad: 502, x->fail_why */
    RESUME_408,                    /* the head did not come whole in time */
};

/* One client connection and its buffers (allocated once it sends a byte). */
struct conn {
    int fd;
    char peer_ip[64];              /* client address, for X-Forwarded-For */
    char peer[80];                 /* "ip:port" for the log */
    char *in;                      /* client bytes: heads, pipelined data */
    size_t in_cap, in_off, in_len;
    char *out;                     /* rewritten heads */
    size_t out_cap;
    char *uin;                     /* backend answer heads */
    size_t uin_cap;
    char *relay;                   /* RELAY_BUF_BYTES for bodies */
    int rcv_ms;                    /* SO_RCVTIMEO in force on fd */
    int linger;                    /* an error answer may sit before unread input */
    struct exchange *x;            /* the current exchange, in the buffer block */
    size_t block_bytes;            /* size of the mapping at in */
    struct sockaddr_storage addr;  /* the client's address */
    int setup;                     /* peer and peer_ip filled in */
    const struct pibl_config *cfg; /* the config of the current exchange (never NULL) */

    /* Event loop state (ev.cpp, loop.cpp). */
    int state;                     /* EV_* */
    int resume;                    /* enum conn_resume: what a blocking thread does */
    int64_t deadline;              /* ms: the current wait ends, 0 = none */
    int64_t idle_since;            /* ms: the last exchange ended */
    int64_t first_byte;            /* ms: a partial head began, 0 = none */
    const char *host, *path;       /* views into in, for the exchange */
    size_t host_len, path_len;
    struct http_tokens ct;         /* the request's Connection tokens */
    struct upstream u;             /* the backend connection, fd -1 = none */
    int addr_k;                    /* which of the backend's addresses */
    int64_t t_sent;                /* us: the request went to the backend */
    size_t u_out, u_len, u_scan;   /* head bytes sent; answer bytes read, scanned */
    long u_head;                   /* the answer head's length */
    int u_reuse;                   /* the backend connection may be pooled */
    uint64_t body_left;            /* answer body bytes still to read */
    const char *p1, *p2;           /* bytes waiting to go to the client */
    size_t p1_len, p2_len;
    off_t file_off;                /* then this range of x->hit */
    uint64_t file_left;
    struct tunnel *t;              /* a tunnel's state (EV_TUNNEL, tunnel.cpp) */
    int ready;                     /* a tunnel's TUNNEL_READY_* bits select() found, 0 = unknown */
    int again;                     /* work is buffered: run without waiting */
    unsigned turn;                 /* the loop turn that last ran it */
    struct conn *next;             /* inbox and queue links */
    int slot;                      /* index in its loop's array */
};

/* Set up the per-fd states for up to n_fds descriptors and the blocking
 * threads' attributes. Start-up only. Returns 0 or -1. */
int conn_init(int n_fds);

/* A new connection for an accepted fd (it owns fd from now on), under cfg.
 * Returns it, or NULL when out of memory (fd is left to the caller). */
struct conn *conn_new(int fd, const struct sockaddr_storage *peer, const struct pibl_config *cfg);

/* Printable addresses and the send timeout, the first time the client sends. */
void conn_setup(struct conn *c);

/* Take a buffer block (sized by c->cfg: a kept one, else a new mapping)
 * and reset its exchange. 0 or -1. */
int conn_buffers(struct conn *c);

/* Give the buffer block back (an idle connection keeps only its struct):
 * kept mapped for the next connection, up to BLOCK_CACHE_MAX blocks. */
void conn_free_buffers(struct conn *c);

/* Buffer blocks held by connections now, all of them together. */
int conn_blocks(void);

/* Blocks kept mapped for the next connections now (the unit tests). */
int conn_cached_blocks(void);

/* Every BLOCK_TRIM_MS (a no-op between), unmap the kept blocks that no
 * connection took since the last trim. Any thread; now in ms. */
void conn_trim_blocks(int64_t now);

/* Set SO_RCVTIMEO on the client socket, if it is not that already. */
void conn_set_rcv(struct conn *c, int ms);

/*
 * The first byte of a request came: the connection is busy, so a graceful
 * stop lets its exchange finish. Returns 0, or -1 when a graceful stop has
 * claimed the idle connection first (close it without answering).
 */
int conn_begin(struct conn *c);

/* The end of every accepted connection, whoever holds it: log lines
 * flushed, backend and client sockets closed, c freed. */
void conn_free(struct conn *c);

/* Close from a blocking thread: a lingering close after an error answer,
 * and never while conn_stop_idle() is shutting the fd down. Frees c. */
void conn_close(struct conn *c);

/*
 * Give c to a blocking thread, which finishes the exchange from where
 * c->resume says, then gives it back to a loop (or closes it). Starts a
 * thread when none is free. Never blocks on I/O.
 */
void conn_hand_over(struct conn *c);

/* Graceful stop: wake the loops and shut down every idle connection. */
void conn_stop_idle(void);

#endif
