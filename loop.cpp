/*
 * loop.cpp - the event-loop threads. A few worker loops (one per core,
 * MAX_LOOPS at most) each run select() over the sockets of their
 * connections and run the exchange of each one that is ready (ev.cpp);
 * other threads hand connections in through a loop's inbox and a byte on
 * its wake pipe. select() sets here are our own bitmaps sized past
 * FD_SETSIZE (Linux takes any nfds); the FD_* macros are never used on
 * them. A worker only watches connections that were busy within
 * IDLE_SHRINK_MS: an idle keep-alive connection gives its buffers back and
 * moves to the parking loop, whose larger set is scanned only when
 * something happens on it, so ten thousand idle clients cost the busy ones
 * nothing. A worker also watches the idle backend connections it pooled.
 *
 * The accept path (loop_accept) gives a new connection to the workers in
 * turn; the reject path (loop_reject) answers a connection turned away at
 * accept and lets it linger in one thread of its own.
 *
 * It does not read or write HTTP bytes itself.
 * Limits: REJECT_MAX turned-away connections lingering at once (past it,
 * closed at once).
 */
#include "loop.h"
#include "conn.h"
#include "ev.h"
#include "http.h"
#include "httpdate.h"
#include "log.h"
#include "pibl.h"
#include "sock.h"
#include "tunnel.h"
#include "upstream.h"

#include <atomic>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/*
 * A loop that always finds work never sleeps, so the scheduler takes it for
 * a CPU hog. A client or backend on the same machine that has work too is
 * runnable but never woken, so it does not preempt the loop: it waits until
 * the loop's time slice runs out (a millisecond or more), and so do its
 * requests. So after a turn that did work the loop yields: such a peer runs
 * its short burst (reads its answers, sends the next requests, sleeps) and
 * the loop goes on; with nothing else runnable the call returns at once.
 * Not after a turn that sent requests to backends, though: those woke the
 * backends' threads, which preempt the loop anyway, and a yield on top only
 * pushes the loop back behind all of them (measured: more CPU per request on
 * 1.4 KB misses, no better p99). And an unrelated CPU hog keeps the CPU for
 * a whole slice at each yield: when yields take more than YIELD_SLOW_US on
 * average the loop stops yielding, and tries one again YIELD_PROBE_US later.
 */
#define YIELD_SLOW_US  1000
#define YIELD_PROBE_US 1000000

/* A tunnel still open on a graceful stop is closed (and logged) this long
 * before shutdown_timeout makes the process exit. */
#define STOP_CUT_EARLY_MS 200

struct loop {
    pthread_mutex_t lock;
    struct conn *inbox;            /* handed in by other threads */
    int wake[2];                   /* a byte here: look at the inbox */
    int woken;                     /* that byte is written and not yet read */
    struct conn **conns;           /* the connections it serves */
    int n, cap;
    fd_mask *rset, *wset;          /* select() sets, `words` long */
    size_t words;
    int64_t yield_avg;             /* µs a sched_yield() took, averaged */
    int64_t yield_probe;           /* while yield_avg is high: next try */
    int sent_up;                   /* this turn sent a request to a backend */
    unsigned turn;                 /* turns taken */
    int64_t pool_purge_at;         /* ms: next look for surplus pooled connections */
    char *scratch;                 /* TUNNEL_BUF_BYTES for its tunnels' reads */
};

static struct loop g_loops[MAX_LOOPS + 1]; /* the workers, then the parking loop */
static int g_n_loops;
static std::atomic<unsigned> g_next_loop;

#define PARK (&g_loops[g_n_loops])

/* Put c (if any) in the loop's inbox and make its select() return. */
static void
loop_push(struct loop *l, struct conn *c)
{
    pthread_mutex_lock(&l->lock);
    if (c != NULL) {
        c->next = l->inbox;
        l->inbox = c;
    }
    int wake = !l->woken;
    l->woken = 1;
    pthread_mutex_unlock(&l->lock);
    if (wake)
        (void)!write(l->wake[1], "", 1);
}

char *
loop_scratch(struct loop *l)
{
    return l->scratch;
}

void
loop_give_tunnel(struct conn *c)
{
    c->state = EV_TUNNEL;
    c->resume = RESUME_FRESH;
    c->again = 0;
    c->deadline = c->idle_since + (int64_t)c->cfg->tunnel_timeout * 1000;
    unsigned next = g_next_loop.fetch_add(1, std::memory_order_relaxed);
    loop_push(&g_loops[next % (unsigned)g_n_loops], c);
}

void
loop_give(struct conn *c)
{
    c->state = EV_HEAD;
    c->resume = RESUME_FRESH;
    c->again = 0;
    c->deadline = 0;
    c->first_byte = 0;
    c->idle_since = pibl_now_ms();
    unsigned next = g_next_loop.fetch_add(1, std::memory_order_relaxed);
    loop_push(&g_loops[next % (unsigned)g_n_loops], c);
}

static int
loop_add(struct loop *l, struct conn *c)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 256;
        struct conn **a = (struct conn **)realloc(l->conns, (size_t)cap * sizeof *a);
        if (a == NULL)
            return -1;
        l->conns = a;
        l->cap = cap;
    }
    c->slot = l->n;
    l->conns[l->n++] = c;
    return 0;
}

void
loop_remove(struct loop *l, struct conn *c)
{
    struct conn *last = l->conns[--l->n];

    l->conns[c->slot] = last;
    last->slot = c->slot;
}

/* Take what other threads handed in; new connections go to the end. */
static void
loop_take(struct loop *l)
{
    char drain[64];

    while (read(l->wake[0], drain, sizeof drain) == (ssize_t)sizeof drain)
        ;
    pthread_mutex_lock(&l->lock);
    struct conn *c = l->inbox;
    l->inbox = NULL;
    l->woken = 0;
    pthread_mutex_unlock(&l->lock);
    while (c != NULL) {
        struct conn *next = c->next;
        if (loop_add(l, c) == -1)
            conn_free(c);
        c = next;
    }
}

static void
set_bit(struct loop *l, int fd, int wr, int *maxfd)
{
    size_t w = (size_t)fd / NFDBITS;

    if (w >= l->words) {
        size_t words = w * 2 + 16;
        fd_mask *r = (fd_mask *)realloc(l->rset, words * sizeof *r);
        fd_mask *s = r ? (fd_mask *)realloc(l->wset, words * sizeof *s) : NULL;
        if (r != NULL)
            l->rset = r;
        if (s == NULL)
            return;                             /* out of memory: not watched this turn */
        l->wset = s;
        memset(l->rset + l->words, 0, (words - l->words) * sizeof *r);
        memset(l->wset + l->words, 0, (words - l->words) * sizeof *s);
        l->words = words;
    }
    (wr ? l->wset : l->rset)[w] |= (fd_mask)1 << ((size_t)fd % NFDBITS);
    if (fd > *maxfd)
        *maxfd = fd;
}

static int
has_bit(const struct loop *l, int fd, int wr)
{
    size_t w = (size_t)fd / NFDBITS;

    return w < l->words && (((wr ? l->wset : l->rset)[w] >> ((size_t)fd % NFDBITS)) & 1);
}

/* Put what c waits for in the sets: one socket, or a tunnel's two. */
static void
loop_watch(struct loop *l, const struct conn *c, int *maxfd)
{
    if (c->state == EV_TUNNEL) {
        int fd[2], rd[2], wr[2];
        tunnel_watch(c, fd, rd, wr);
        for (int i = 0; i < 2; i++) {
            if (rd[i])
                set_bit(l, fd[i], 0, maxfd);
            if (wr[i])
                set_bit(l, fd[i], 1, maxfd);
        }
        return;
    }
    int wr = 0, fd = ev_wait_fd(c, &wr);
    set_bit(l, fd, wr, maxfd);
}

/* 1 when select() found what c waits for; for a tunnel, which sockets go in c->ready. */
static int
loop_ready(const struct loop *l, struct conn *c, int maxfd)
{
    if (c->state == EV_TUNNEL) {
        static const int in[2] = { TUNNEL_READY_CLIENT_IN, TUNNEL_READY_UP_IN };
        static const int out[2] = { TUNNEL_READY_CLIENT_OUT, TUNNEL_READY_UP_OUT };
        int fd[2], rd[2], wr[2];
        tunnel_watch(c, fd, rd, wr);
        c->ready = 0;
        for (int i = 0; i < 2; i++) {
            if (fd[i] <= maxfd && rd[i] && has_bit(l, fd[i], 0))
                c->ready |= in[i];
            if (fd[i] <= maxfd && wr[i] && has_bit(l, fd[i], 1))
                c->ready |= out[i];
        }
        return c->ready != 0;
    }
    int wr = 0, fd = ev_wait_fd(c, &wr);
    return fd <= maxfd && has_bit(l, fd, wr);
}

/* upstream_pool_scan's visit: before select() (reap 0) each idle connection
 * this loop pooled goes in the read set; after it (reap 1) each with
 * something to read (the backend closed it, or stray bytes) is closed. The
 * sets are rebuilt every turn, so one another thread takes meanwhile drops
 * out on the next; its bit, if set, is ignored, since only entries still
 * pooled and still ours close. */
struct pool_watch {
    struct loop *l;
    int *maxfd;
    int reap;
};

static int
pool_watch(void *arg, int fd)
{
    struct pool_watch *w = (struct pool_watch *)arg;

    if (!w->reap) {
        set_bit(w->l, fd, 0, w->maxfd);
        return 0;
    }
    return fd <= *w->maxfd && has_bit(w->l, fd, 0);
}

/* The idle backend connections of this loop, and every POOL_PURGE_MS the
 * purge of those a burst left over (see upstream_pool_scan). */
static void
loop_pool_scan(struct loop *l, int *maxfd, int reap, int64_t now)
{
    struct pool_watch w = { l, maxfd, reap };
    int purge = !reap && now >= l->pool_purge_at;

    if (purge) {
        l->pool_purge_at = now + POOL_PURGE_MS;
        conn_trim_blocks(now);                  /* kept buffer blocks, likewise */
    }
    upstream_pool_scan(loop_id(l), purge, now, pool_watch, &w);
}

/* Yield after a busy turn, unless yields have become slow (see YIELD_SLOW_US). */
static void
loop_yield(struct loop *l)
{
    int64_t t0 = pibl_now_us();
    int slow = l->yield_avg > YIELD_SLOW_US;

    if (slow && t0 < l->yield_probe)
        return;
    sched_yield();
    int64_t took = pibl_now_us() - t0;
    l->yield_avg = slow ? took : l->yield_avg + (took - l->yield_avg) / 8;
    if (l->yield_avg > YIELD_SLOW_US)
        l->yield_probe = t0 + took + YIELD_PROBE_US;
}

/*
 * Run the connections select() found ready, or that have buffered work:
 * first those in the middle of an exchange (heads == 0), then those
 * waiting for a request (heads == 1). Answers that are already here go
 * out before new requests wake backend threads, which preempt the loop:
 * A/B on the 1.4 KB miss at 64 connections (12 alternating rounds of
 * 5 s), p99 6.5 ms against 8.0 and 11% more requests/s. A connection runs
 * at most once a turn (c->turn), even if it changed state in between.
 */
static void
loop_run_ready(struct loop *l, int n, int maxfd, int first_new, int heads)
{
    for (int i = 0; i < first_new && i < l->n;) {
        struct conn *c = l->conns[i];
        if (c->turn != l->turn && (heads || c->state != EV_HEAD)) {
            if (c->again || (n > 0 && loop_ready(l, c, maxfd))) {
                c->again = 0;
                c->turn = l->turn;
                ev_run(l, c);
            }
        }
        if (i < l->n && l->conns[i] == c)
            i++;
    }
}

static void *
loop_main(void *arg)
{
    struct loop *l = (struct loop *)arg;

    log_batch_begin();
    for (;;) {
        int64_t now = pibl_now_ms(), wait = 1000;
        int maxfd = l->wake[0];
        int stopping = pibl_stopping();

        if (l->words > 0) {
            memset(l->rset, 0, l->words * sizeof *l->rset);
            memset(l->wset, 0, l->words * sizeof *l->wset);
        }
        set_bit(l, l->wake[0], 0, &maxfd);
        loop_pool_scan(l, &maxfd, 0, now);
        for (int i = 0; i < l->n;) {
            struct conn *c = l->conns[i];
            /* A tunnel on a graceful stop: cut just before the process exits. */
            if (stopping && c->state == EV_TUNNEL && c->deadline > pibl_stop_cut() - STOP_CUT_EARLY_MS)
                c->deadline = pibl_stop_cut() - STOP_CUT_EARLY_MS;
            if ((c->deadline != 0 && now >= c->deadline) ||
                (stopping && c->state == EV_HEAD && c->in_len == 0)) {
                ev_timeout(l, c);
            } else {
                loop_watch(l, c, &maxfd);
                if (c->again)
                    wait = 0;
                if (c->deadline != 0 && c->deadline - now < wait)
                    wait = c->deadline - now;
            }
            if (i < l->n && l->conns[i] == c)
                i++;
        }
        struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)(wait % 1000 * 1000) };
        log_flush();                            /* the lines of this turn */
        int n = select(maxfd + 1, (fd_set *)l->rset, (fd_set *)l->wset, NULL, &tv);
        if (n == -1)
            continue;
        if (n > 0)
            loop_pool_scan(l, &maxfd, 1, now);
        int first_new = l->n;
        if (n > 0 && has_bit(l, l->wake[0], 0)) {
            loop_take(l);
            for (int i = first_new; i < l->n;) {
                struct conn *c = l->conns[i];
                if (c->in != NULL)
                    ev_run(l, c);               /* back from a thread: bytes may be buffered */
                if (i < l->n && l->conns[i] == c)
                    i++;
            }
        }
        l->turn++;
        loop_run_ready(l, n, maxfd, first_new, 0);
        loop_run_ready(l, n, maxfd, first_new, 1);
        if (n > 0 && !l->sent_up)
            loop_yield(l);
        l->sent_up = 0;
    }
    return NULL;
}

/*
 * The parking loop: idle keep-alive connections without buffers. One that
 * becomes readable goes back to a worker; one idle for keepalive_timeout,
 * or any on a graceful stop, is closed.
 */
static void *
park_main(void *arg)
{
    struct loop *l = (struct loop *)arg;

    for (;;) {
        int64_t now = pibl_now_ms(), wait = 1000;
        int maxfd = l->wake[0];
        int stopping = pibl_stopping();

        if (l->words > 0)
            memset(l->rset, 0, l->words * sizeof *l->rset);
        set_bit(l, l->wake[0], 0, &maxfd);
        for (int i = 0; i < l->n;) {
            struct conn *c = l->conns[i];
            if (stopping || now >= c->deadline) {
                loop_remove(l, c);
                conn_free(c);
                continue;
            }
            set_bit(l, c->fd, 0, &maxfd);
            if (c->deadline - now < wait)
                wait = c->deadline - now;
            i++;
        }
        struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)(wait % 1000 * 1000) };
        int first_new = l->n;
        int n = select(maxfd + 1, (fd_set *)l->rset, NULL, NULL, &tv);
        if (n <= 0)
            continue;
        for (int i = 0; i < first_new && i < l->n;) {
            struct conn *c = l->conns[i];
            if (c->fd <= maxfd && has_bit(l, c->fd, 0)) {
                loop_remove(l, c);
                loop_give(c);
                continue;
            }
            i++;
        }
        if (has_bit(l, l->wake[0], 0))
            loop_take(l);
    }
    return NULL;
}

int
loop_accept(int fd, const struct sockaddr_storage *peer)
{
    struct conn *c = conn_new(fd, peer, pibl_config_now());

    if (c == NULL)
        return -1;
    sock_set_nonblocking(fd, 1);
    loop_give(c);
    return 0;
}

int
loop_init(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
    g_n_loops = cores < 1 ? 1 : cores > MAX_LOOPS ? MAX_LOOPS : (int)cores;
    for (int i = 0; i <= g_n_loops; i++) {
        struct loop *l = &g_loops[i];
        pthread_t t;
        pthread_mutex_init(&l->lock, NULL);
        if (pipe2(l->wake, O_NONBLOCK | O_CLOEXEC) == -1)
            return -1;
        if (i < g_n_loops && (l->scratch = (char *)malloc(TUNNEL_BUF_BYTES)) == NULL)
            return -1;
        int rc = pthread_create(&t, &attr, i < g_n_loops ? loop_main : park_main, l);
        if (rc != 0) {
            errno = rc;
            return -1;
        }
    }
    return 0;
}

/*
 * Turned-away connections linger here for up to LINGER_MS, their input read
 * and dropped, so that the 503 is read before the close (closing with
 * unread input sends a reset that can destroy it). One thread serves them
 * all with non-blocking reads, so the accept loop never waits.
 */

static pthread_mutex_t g_reject_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_reject_more = PTHREAD_COND_INITIALIZER;
static int g_reject_fd[REJECT_MAX];
static int64_t g_reject_until[REJECT_MAX];      /* ms */
static int g_n_reject;
static int g_reject_thread;                     /* started */

static void *
reject_main(void *arg)
{
    char drop[4096];

    (void)arg;
    pthread_mutex_lock(&g_reject_lock);
    for (;;) {
        while (g_n_reject == 0)
            pthread_cond_wait(&g_reject_more, &g_reject_lock);
        int64_t now = pibl_now_ms();
        for (int i = 0; i < g_n_reject;) {
            ssize_t n;
            while ((n = recv(g_reject_fd[i], drop, sizeof drop, MSG_DONTWAIT)) > 0)
                ;
            int done = n == 0 || (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK) ||
                now >= g_reject_until[i];
            if (done) {
                close(g_reject_fd[i]);
                g_reject_fd[i] = g_reject_fd[g_n_reject - 1];
                g_reject_until[i] = g_reject_until[g_n_reject - 1];
                g_n_reject--;
            } else {
                i++;
            }
        }
        pthread_mutex_unlock(&g_reject_lock);
        usleep(20000);
        pthread_mutex_lock(&g_reject_lock);
    }
    return NULL;
}

void
loop_reject(int fd, int status, const char *why)
{
    char buf[320], date[HTTP_DATE_LEN + 1];
    int bl = (int)strlen(why) + 1;
    http_format_date(time(NULL), date);
    int n = snprintf(buf, sizeof buf,
        "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        "Connection: close\r\n\r\n%s\n", status, http_reason_phrase(status), date, bl, why);
    if (n > 0 && (size_t)n < sizeof buf)
        send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(fd, SHUT_WR);
    pthread_mutex_lock(&g_reject_lock);
    if (!g_reject_thread)
        g_reject_thread = pibl_spawn(reject_main, NULL) == 0;
    if (g_reject_thread && g_n_reject < REJECT_MAX) {
        g_reject_fd[g_n_reject] = fd;
        g_reject_until[g_n_reject++] = pibl_now_ms() + LINGER_MS;
        pthread_cond_signal(&g_reject_more);
        fd = -1;
    }
    pthread_mutex_unlock(&g_reject_lock);
    if (fd != -1)
        close(fd);                              /* too many lingering: plain close */
}

void
loop_park(struct conn *c)
{
    loop_push(PARK, c);
}

int
loop_id(const struct loop *l)
{
    return (int)(l - g_loops);
}

void
loop_sent_up(struct loop *l)
{
    l->sent_up = 1;
}

void
loop_wake_all(void)
{
    for (int i = 0; i <= g_n_loops; i++)
        loop_push(&g_loops[i], NULL);
}
