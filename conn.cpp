/*
 * conn.cpp - a client connection's life, from accept to close.
 *
 * A connection's buffers are one mmap'd block, taken when its client first
 * sends a byte: the request head buffer, the rewritten head, the backend's
 * answer head, the body relay buffer and the exchange itself. After
 * IDLE_SHRINK_MS without a request the block is given back (kept for the
 * next connection, up to BLOCK_CACHE_MAX, else unmapped) and the connection
 * waits in the parking loop (loop.cpp), so an idle keep-alive client costs
 * its struct conn and its socket.
 *
 * What the event loops do not do themselves, a blocking thread does:
 * request bodies, cache fills and revalidation, chunked, close-delimited and
 * 1xx answers, every error answer, slow clients, failed backends. It takes
 * the connection where the loop left it (c->resume), finishes that one
 * exchange with the blocking code of exchange.cpp under socket timeouts,
 * and hands the connection back to a loop. Idle threads wait SLOW_IDLE_S
 * for more, then exit.
 *
 * It does not parse HTTP nor choose backends.
 * Limits: BLOCK_CACHE_MAX blocks kept (unmapped after BLOCK_TRIM_MS to twice that unused);
 * a buffer block of 3 x max_header_bytes + 2 x HEAD_EXTRA_BYTES +
 * RELAY_BUF_BYTES + the exchange; THREAD_STACK_BYTES per blocking thread;
 * LINGER_MS and LINGER_MAX_BYTES drained before closing after an error.
 */
#include "conn.h"
#include "cachepolicy.h"
#include "exchange.h"
#include "log.h"
#include "loop.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"
#include "tunnel.h"

#include <arpa/inet.h>
#include <atomic>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/*
 * Per client fd: IDLE while waiting for a request, BUSY inside one. On a
 * graceful stop conn_stop_idle() moves IDLE -> CLOSING, shuts the socket
 * down, then marks it STOPPED; the owning thread never closes the fd while
 * it is CLOSING, so shutdown() cannot hit a reused descriptor.
 */
enum { ST_NONE, ST_IDLE, ST_BUSY, ST_CLOSING, ST_STOPPED };
static std::atomic<uint8_t> *g_state;
static int g_n_fds;                     /* entries in g_state */

void
conn_set_rcv(struct conn *c, int ms)
{
    if (c->rcv_ms != ms) {
        sock_set_timeout(c->fd, SO_RCVTIMEO, ms);
        c->rcv_ms = ms;
    }
}

/* Size of a connection's buffer block. */
static size_t
conn_block_bytes(const struct pibl_config *cfg)
{
    size_t head = (size_t)cfg->max_header_bytes;

    return head + (head + HEAD_EXTRA_BYTES) + (head + HEAD_EXTRA_BYTES) + RELAY_BUF_BYTES +
        sizeof(struct exchange);
}

/* Buffer blocks held by connections now, all of them together. */
static std::atomic<int> g_blocks;

/*
 * Blocks given back stay mapped in a small stack for the next connection
 * that needs one. Past MAX_WARM_BLOCKS busy connections (ev.h) each
 * exchange gives its block back; unmapping it and mapping a new one for
 * the next request took the process's address-space lock twice and flushed
 * the other cores' TLBs (an IPI) at every munmap, so with 10,000 active
 * clients the loops spent their time waiting on each other in the kernel
 * (perf: a third of the samples in rwsem waits and cross-core calls;
 * 1.4 KB hits went from 160,000 req/s at 1,000 clients to 20,000 at
 * 10,000). Blocks no connection took for a whole BLOCK_TRIM_MS are unmapped
 * (conn_trim_blocks), so an idle PIBL gives the memory back.
 */
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static char *g_cache[BLOCK_CACHE_MAX];  /* a stack: the newest on top */
static size_t g_cache_size[BLOCK_CACHE_MAX];
static int g_n_cache;
static int g_cache_low;                 /* the fewest in it since the last trim */
static int64_t g_cache_trim_at;         /* ms: the next trim */

/* A block of size bytes: one from the stack when it has one of that size, else a new mapping. */
static char *
block_get(size_t size)
{
    char *block = NULL, *drop[BLOCK_CACHE_MAX];
    size_t drop_size[BLOCK_CACHE_MAX];
    int n_drop = 0;

    pthread_mutex_lock(&g_cache_lock);
    while (block == NULL && g_n_cache > 0) {
        g_n_cache--;
        if (g_cache_size[g_n_cache] == size) {
            block = g_cache[g_n_cache];
        } else {                                /* sized by an earlier config */
            drop[n_drop] = g_cache[g_n_cache];
            drop_size[n_drop++] = g_cache_size[g_n_cache];
        }
        if (g_n_cache < g_cache_low)
            g_cache_low = g_n_cache;
    }
    pthread_mutex_unlock(&g_cache_lock);
    for (int i = 0; i < n_drop; i++)
        munmap(drop[i], drop_size[i]);
    if (block != NULL)
        return block;
    /* mmap, not malloc: munmap hands the pages back to the system; freed
     * malloc memory would stay resident. */
    block = (char *)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return block == MAP_FAILED ? NULL : block;
}

/* Give a block back: onto the stack, or unmapped when the stack is full. */
static void
block_put(char *block, size_t size)
{
    pthread_mutex_lock(&g_cache_lock);
    if (g_n_cache < BLOCK_CACHE_MAX) {
        g_cache[g_n_cache] = block;
        g_cache_size[g_n_cache++] = size;
        block = NULL;
    }
    pthread_mutex_unlock(&g_cache_lock);
    if (block != NULL)
        munmap(block, size);
}

void
conn_trim_blocks(int64_t now)
{
    char *drop[BLOCK_CACHE_MAX];
    size_t drop_size[BLOCK_CACHE_MAX];
    int n_drop = 0;

    pthread_mutex_lock(&g_cache_lock);
    if (now >= g_cache_trim_at) {
        g_cache_trim_at = now + BLOCK_TRIM_MS;
        /* The bottom g_cache_low blocks were not taken since the last trim. */
        n_drop = g_cache_low;
        memcpy(drop, g_cache, (size_t)n_drop * sizeof *drop);
        memcpy(drop_size, g_cache_size, (size_t)n_drop * sizeof *drop_size);
        memmove(g_cache, g_cache + n_drop, (size_t)(g_n_cache - n_drop) * sizeof *g_cache);
        memmove(g_cache_size, g_cache_size + n_drop, (size_t)(g_n_cache - n_drop) * sizeof *g_cache_size);
        g_n_cache -= n_drop;
        g_cache_low = g_n_cache;
    }
    pthread_mutex_unlock(&g_cache_lock);
    for (int i = 0; i < n_drop; i++)
        munmap(drop[i], drop_size[i]);
}

int
conn_cached_blocks(void)
{
    pthread_mutex_lock(&g_cache_lock);
    int n = g_n_cache;
    pthread_mutex_unlock(&g_cache_lock);
    return n;
}

void
conn_free_buffers(struct conn *c)
{
    if (c->in != NULL) {
        block_put(c->in, c->block_bytes);
        g_blocks.fetch_sub(1, std::memory_order_relaxed);
    }
    c->in = c->out = c->uin = c->relay = NULL;
    c->x = NULL;
    c->in_off = c->in_len = 0;
}

int
conn_buffers(struct conn *c)
{
    size_t head = (size_t)c->cfg->max_header_bytes;
    size_t size = conn_block_bytes(c->cfg);
    char *block = block_get(size);

    if (block == NULL)
        return -1;
    g_blocks.fetch_add(1, std::memory_order_relaxed);
    c->block_bytes = size;
    c->in = block;
    c->in_cap = head;
    c->out = c->in + c->in_cap;
    c->out_cap = head + HEAD_EXTRA_BYTES;
    c->uin = c->out + c->out_cap;
    c->uin_cap = head + HEAD_EXTRA_BYTES;
    c->relay = c->uin + c->uin_cap;
    /* mmap's alignment holds: every size before it is a multiple of 8. */
    c->x = (struct exchange *)(c->relay + RELAY_BUF_BYTES);
    exchange_reset(c->x);
    return 0;
}

void
conn_setup(struct conn *c)
{
    char ip[INET6_ADDRSTRLEN];
    int port = sock_addr_text(&c->addr, ip, sizeof ip);

    snprintf(c->peer_ip, sizeof c->peer_ip, "%s", ip);
    snprintf(c->peer, sizeof c->peer, strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
    /* For the blocking threads: a client that stops reading frees its
     * thread after client_timeout (the loops never block on it). */
    sock_set_timeout(c->fd, SO_SNDTIMEO, c->cfg->client_timeout * 1000);
    c->setup = 1;
}

/*
 * What the event loops do not do themselves, a blocking thread does:
 * request bodies, cache fills and revalidation, chunked, close-delimited and
 * 1xx answers, every error answer, slow clients, failed backends. It takes
 * the connection where the loop left it (c->resume), finishes that one
 * exchange with the plain blocking code under socket timeouts, and hands the
 * connection back to a loop. Idle threads wait SLOW_IDLE_S for more, then
 * exit.
 */
#define SLOW_IDLE_S 10

static pthread_mutex_t g_slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_slow_more = PTHREAD_COND_INITIALIZER;
static struct conn *g_slow_head, *g_slow_tail;
static int g_slow_queued;          /* connections waiting for a thread */
static int g_slow_waiting;         /* threads waiting for a connection */
static int g_slow_threads;
static pthread_attr_t g_slow_attr;

void
conn_free(struct conn *c)
{
    log_flush();                                /* its last line, before it counts as closed */
    upstream_close(&c->u);
    conn_free_buffers(c);
    close(c->fd);
    free(c);
    pibl_conn_closed();
}

void
conn_close(struct conn *c)
{
    std::atomic<uint8_t> *st = &g_state[c->fd];
    char ch;

    /* After an error answer the client may still be sending: closing with
     * unread input would reset the connection and could destroy the answer
     * in flight, so read and drop for a bounded time first (a lingering
     * close, as nginx and Apache do). */
    if (c->linger && shutdown(c->fd, SHUT_WR) == 0) {
        int64_t until = pibl_now_ms() + LINGER_MS;
        size_t drained = 0;
        conn_set_rcv(c, LINGER_MS);
        while (drained < LINGER_MAX_BYTES && pibl_now_ms() < until) {
            ssize_t r = recv(c->fd, c->relay ? c->relay : &ch, c->relay ? RELAY_BUF_BYTES : 1, 0);
            if (r <= 0 && !(r == -1 && errno == EINTR))
                break;
            drained += r > 0 ? (size_t)r : 0;
        }
    }
    for (;;) {
        uint8_t cur = st->load();
        if (cur == ST_CLOSING)
            sched_yield();
        else if (st->compare_exchange_strong(cur, ST_NONE))
            break;
    }
    conn_free(c);
}

/* Finish the exchange the loop handed over. Returns like exchange_serve(). */
static int
slow_exchange(struct conn *c)
{
    struct exchange *x = c->x;

    switch (c->resume) {
    case RESUME_FORWARD:
        return exchange_end(c, x, exchange_forward(c, x, c->host, c->host_len, c->path, c->path_len,
            &c->ct));
    case RESUME_AFTER_HEAD: {
        size_t len = c->u_len;
        long rh_len = c->u_head;
        int hr = exchange_relay_interim(c, x, &c->u, &len, &rh_len);
        if (hr == ANSWER_OK)
            return exchange_end(c, x, exchange_relay_final(c, x, &c->u, len, rh_len, c->t_sent));
        if (hr == ANSWER_CLIENT_GONE)
            return exchange_end(c, x, -1);
        upstream_close(&c->u);
        if (hr != ANSWER_BAD_WHY)
            x->fail_why = hr == ANSWER_BAD ? "invalid answer from backend" : "backend closed mid-head";
        rr_record(x->backend, 0, 0, hr == ANSWER_CUT ? "closed mid-head" : "invalid answer");
    }
        /* FALLTHROUGH */
    case RESUME_BAD_HEAD:
        exchange_error(c, x, 502, x->fail_why, 1);
        return exchange_end(c, x, 0);
    case RESUME_408:
        exchange_error(c, x, 408, "client too slow", 0);
        exchange_log(c, x);
        return EXCHANGE_CLOSE;
    default:
        return exchange_serve(c);
    }
}

static void
slow_serve(struct conn *c)
{
    std::atomic<uint8_t> *st = &g_state[c->fd];

    sock_set_nonblocking(c->fd, 0);
    /* Bytes of a request are here: busy (a graceful stop lets it finish). */
    st->store(c->in_len > 0 || c->resume != RESUME_FRESH ? ST_BUSY : ST_IDLE);
    int rc = slow_exchange(c);
    if (rc != EXCHANGE_CLOSE) {
        uint8_t cur = st->load();
        if ((cur != ST_IDLE && cur != ST_BUSY) || !st->compare_exchange_strong(cur, ST_NONE)) {
            if (rc == EXCHANGE_TUNNEL)
                exchange_end(c, c->x, -1);      /* its line, as a tunnel's end would */
            rc = EXCHANGE_CLOSE;                /* a graceful stop shut it down */
        }
    }
    if (rc == EXCHANGE_CLOSE) {
        conn_close(c);
        return;
    }
    sock_set_nonblocking(c->fd, 1);
    if (rc == EXCHANGE_TUNNEL) {
        if (tunnel_begin(c) == -1) {
            c->x->err = "out of memory for a tunnel";
            exchange_end(c, c->x, -1);
            conn_close(c);
            return;
        }
        sock_set_nonblocking(c->u.fd, 1);
        loop_give_tunnel(c);                    /* a loop copies the bytes from now on */
        return;
    }
    loop_give(c);
}

static void *
slow_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_slow_lock);
    for (;;) {
        g_slow_waiting++;
        while (g_slow_head == NULL) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += SLOW_IDLE_S;
            if (pthread_cond_timedwait(&g_slow_more, &g_slow_lock, &ts) == ETIMEDOUT &&
                g_slow_head == NULL) {
                g_slow_waiting--;
                g_slow_threads--;
                pthread_mutex_unlock(&g_slow_lock);
                return NULL;
            }
        }
        g_slow_waiting--;
        struct conn *c = g_slow_head;
        g_slow_head = c->next;
        if (g_slow_head == NULL)
            g_slow_tail = NULL;
        g_slow_queued--;
        pthread_mutex_unlock(&g_slow_lock);
        slow_serve(c);
        pthread_mutex_lock(&g_slow_lock);
    }
}

void
conn_hand_over(struct conn *c)
{
    pthread_t t;

    c->next = NULL;
    pthread_mutex_lock(&g_slow_lock);
    if (g_slow_tail != NULL)
        g_slow_tail->next = c;
    else
        g_slow_head = c;
    g_slow_tail = c;
    g_slow_queued++;
    struct conn *orphans = NULL;
    if (g_slow_waiting >= g_slow_queued) {
        pthread_cond_signal(&g_slow_more);
    } else {
        int rc = pthread_create(&t, &g_slow_attr, slow_main, NULL);
        if (rc == 0) {
            g_slow_threads++;
        } else if (g_slow_threads == 0) {
            /* No thread will ever take them: close them. */
            log_line("pibl: warning: cannot start a thread: %s", strerror(rc));
            orphans = g_slow_head;
            g_slow_head = g_slow_tail = NULL;
            g_slow_queued = 0;
        }
        /* Otherwise a running thread takes it when it is done. */
    }
    pthread_mutex_unlock(&g_slow_lock);
    while (orphans != NULL) {
        struct conn *next = orphans->next;
        if (orphans->resume != RESUME_FRESH) {
            orphans->x->err = "cannot start a thread";
            exchange_end(orphans, orphans->x, -1);      /* the lock, the log line */
        }
        conn_close(orphans);
        orphans = next;
    }
}

void
conn_stop_idle(void)
{
    loop_wake_all();                            /* they close their idle connections */
    for (int fd = 0; fd < g_n_fds; fd++) {
        uint8_t idle = ST_IDLE;
        if (g_state[fd].compare_exchange_strong(idle, ST_CLOSING)) {
            shutdown(fd, SHUT_RD);
            g_state[fd].store(ST_STOPPED);
        }
    }
}

int
conn_begin(struct conn *c)
{
    std::atomic<uint8_t> *st = &g_state[c->fd];
    uint8_t idle = ST_IDLE;

    st->compare_exchange_strong(idle, ST_BUSY);
    return st->load() == ST_BUSY ? 0 : -1;
}

int
conn_blocks(void)
{
    return g_blocks.load(std::memory_order_relaxed);
}

struct conn *
conn_new(int fd, const struct sockaddr_storage *peer, const struct pibl_config *cfg)
{
    struct conn *c = (struct conn *)calloc(1, sizeof *c);

    if (c == NULL)
        return NULL;
    c->fd = fd;
    c->addr = *peer;
    c->u.fd = -1;
    c->cfg = cfg;
    return c;
}

int
conn_init(int n_fds)
{
    g_n_fds = n_fds;
    g_state = new std::atomic<uint8_t>[n_fds];
    for (int i = 0; i < n_fds; i++)
        g_state[i].store(ST_NONE);
    pthread_attr_init(&g_slow_attr);
    pthread_attr_setdetachstate(&g_slow_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&g_slow_attr, THREAD_STACK_BYTES);
    return 0;
}
