/*
 * upstream.cpp - backend sockets and the idle keep-alive pool.
 *
 * A backend's name may resolve to several addresses (rr.cpp keeps up to
 * MAX_BACKEND_ADDRS): a connect falls through them while they refuse, and
 * stops at the first that stays silent, so that a dead host costs one
 * connect_timeout, not one per address.
 *
 * The pool: idle keep-alive connections to one backend, newest last. One a
 * loop pooled is watched by that loop (owner) while idle: any event on it,
 * the backend closing it or stray bytes after its last answer, closes it at
 * once, as nginx does, so it is taken without a check. One a blocking
 * thread pooled (owner -1) is peeked before reuse. Entries a burst left
 * over are closed by halves (see POOL_PURGE_MS).
 *
 * It does not touch client sockets or HTTP bytes.
 * Limits: POOL_MAX idle connections per backend (past it, closed).
 */
#include "upstream.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"

#include <atomic>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The idle connections to one backend (see the top of this file). */
struct pool {
    pthread_mutex_t lock;
    struct { int fd, owner; int64_t since; } idle[POOL_MAX];   /* since: ms, pooled */
    std::atomic<int> n;            /* changed under lock; read without, to skip */
};

static struct pool g_pools[MAX_BACKENDS];
static std::atomic<int> g_pool_slots;     /* past the highest slot ever pooled to */

/*
 * Take a live idle connection to backend b from the pool, or -1. A loop
 * (owner >= 0) takes the newest one it pooled itself if there is one, so
 * each loop keeps reusing the same few connections, as an nginx worker
 * does with its own keep-alive cache: the backend's side of them (with
 * pibl-origin, a thread each) is always woken by the same loop.
 * A/B, 1.4 KB miss, c64, two runs of 10 alternating 5 s rounds: p99 4.9
 * against 5.3 ms and 4.4 against 4.8, CPU per request the same.
 */
int
upstream_pool_get(int b, int owner)
{
    struct pool *p = &g_pools[b];

    for (;;) {
        int fd = -1, watched = 0;
        pthread_mutex_lock(&p->lock);
        int n = p->n.load(std::memory_order_relaxed);
        if (n > 0) {
            int k = n - 1;
            for (int j = n - 1; owner != -1 && j >= 0; j--) {
                if (p->idle[j].owner == owner) {
                    k = j;
                    break;
                }
            }
            fd = p->idle[k].fd;
            watched = p->idle[k].owner != -1;
            memmove(&p->idle[k], &p->idle[k + 1], (size_t)(n - 1 - k) * sizeof p->idle[0]);
            p->n.store(n - 1, std::memory_order_relaxed);
        }
        pthread_mutex_unlock(&p->lock);
        if (fd == -1)
            return -1;
        /* An idle connection the backend closed reads EOF (or stray bytes). */
        char ch;
        if (watched || (recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) == -1 &&
                        (errno == EAGAIN || errno == EWOULDBLOCK))) {
            rr_conns(b, 1);
            return fd;
        }
        close(fd);
    }
}

void
upstream_pool_put(int b, int fd, int owner)
{
    struct pool *p = &g_pools[b];

    pthread_mutex_lock(&p->lock);
    int n = p->n.load(std::memory_order_relaxed);
    if (n < POOL_MAX && !pibl_stopping() && rr_is_active(b)) {
        p->idle[n].fd = fd;
        p->idle[n].owner = owner;
        p->idle[n].since = pibl_now_us() / 1000;
        p->n.store(n + 1, std::memory_order_relaxed);
        fd = -1;
    }
    pthread_mutex_unlock(&p->lock);
    rr_conns(b, -1);                            /* idle from now on, or closed */
    if (fd != -1) {
        close(fd);
        return;
    }
    int slots = g_pool_slots.load(std::memory_order_relaxed);
    while (slots <= b && !g_pool_slots.compare_exchange_weak(slots, b + 1))
        ;
}

int
upstream_connect(int b, int connect_ms)
{
    int err = ECONNREFUSED;

    for (int k = 0;; k++) {
        socklen_t alen;
        const struct sockaddr *sa = rr_addr(b, k, &alen);
        if (sa == NULL)
            break;
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd == -1)
            return -1;                          /* EMFILE and such: ours, not the backend's */
        /* Linux applies SO_SNDTIMEO to a blocking connect (EINPROGRESS on
         * expiry). Worker threads block the signals PIBL handles, so no EINTR. */
        sock_set_timeout(fd, SO_SNDTIMEO, connect_ms);
        if (connect(fd, sa, alen) == 0)
            return fd;
        err = errno == EINPROGRESS ? ETIMEDOUT : errno;
        close(fd);
        if (err == ETIMEDOUT)
            break;                              /* a silent address: do not wait twice */
    }
    errno = err;
    return -1;
}

void
upstream_options(const struct pibl_config *cfg, int fd)
{
    int one = 1;

    sock_set_timeout(fd, SO_SNDTIMEO, cfg->backend_timeout * 1000);
    sock_set_timeout(fd, SO_RCVTIMEO, cfg->backend_timeout * 1000);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int
upstream_open(const struct pibl_config *cfg, int b)
{
    int fd = upstream_connect(b, cfg->connect_timeout * 1000);

    if (fd != -1) {
        upstream_options(cfg, fd);
        rr_conns(b, 1);
    }
    return fd;
}

void
upstream_close(struct upstream *u)
{
    if (u->fd != -1) {
        close(u->fd);
        rr_conns(u->backend, -1);
    }
    u->fd = -1;
}

/*
 * An entry loop me may purge: its own, or for loop 0 the blocking threads'
 * too, idle POOL_PURGE_MS or more. A burst leaves more connections than the
 * steady load takes, and the per-loop preference of upstream_pool_get()
 * leaves the surplus at the bottom; each one costs a poll in every select()
 * of its loop. HAProxy's pool-purge-delay does the same, with the same 5 s.
 * A last one stays, so the next request after a pause needs no connect.
 */
static int
upstream_pool_stale(const struct pool *p, int i, int me, int64_t now)
{
    int owner = p->idle[i].owner;

    return (owner == me || (owner == -1 && me == 0)) && now - p->idle[i].since >= POOL_PURGE_MS;
}

void
upstream_pool_scan(int me, int purge, int64_t now, int (*visit)(void *arg, int fd), void *arg)
{
    int slots = g_pool_slots.load(std::memory_order_relaxed);

    for (int b = 0; b < slots; b++) {
        struct pool *p = &g_pools[b];
        if (p->n.load(std::memory_order_relaxed) == 0)
            continue;
        pthread_mutex_lock(&p->lock);
        int n = p->n.load(std::memory_order_relaxed), kept = 0, drop = 0;
        for (int i = 0; purge && i < n; i++)
            drop += upstream_pool_stale(p, i, me, now);
        drop /= 2;
        for (int i = 0; i < n; i++) {
            int fd = p->idle[i].fd;
            if (drop > 0 && upstream_pool_stale(p, i, me, now)) {
                close(fd);
                drop--;
                continue;
            }
            if (p->idle[i].owner == me && visit(arg, fd))
                close(fd);
            else
                p->idle[kept++] = p->idle[i];
        }
        p->n.store(kept, std::memory_order_relaxed);
        pthread_mutex_unlock(&p->lock);
    }
}

int
upstream_connect_async(struct upstream *u, int *addr_k)
{
    for (;; (*addr_k)++) {
        socklen_t alen;
        const struct sockaddr *sa = rr_addr(u->backend, *addr_k, &alen);
        if (sa == NULL) {
            errno = ECONNREFUSED;
            return UPSTREAM_FAILED;
        }
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd == -1)
            return UPSTREAM_FAILED;
        u->fd = fd;
        rr_conns(u->backend, 1);
        if (connect(fd, sa, alen) == 0)
            return UPSTREAM_UP;
        if (errno == EINPROGRESS)
            return UPSTREAM_PENDING;
        upstream_close(u);
    }
}

void
upstream_ready(const struct pibl_config *cfg, int fd)
{
    sock_set_nonblocking(fd, 0);                     /* the loop uses MSG_DONTWAIT */
    upstream_options(cfg, fd);
}

void
upstream_pool_flush(int b)
{
    struct pool *p = &g_pools[b];

    pthread_mutex_lock(&p->lock);
    for (int i = p->n.load(std::memory_order_relaxed); i > 0; i--)
        close(p->idle[i - 1].fd);                /* a loop watching one drops it next turn */
    p->n.store(0, std::memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
}

void
upstream_init(void)
{
    for (int i = 0; i < MAX_BACKENDS; i++) {
        pthread_mutex_init(&g_pools[i].lock, NULL);
        g_pools[i].n.store(0);
    }
}
