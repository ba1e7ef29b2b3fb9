/*
 * rr.cpp - the backend table, strict round robin and passive up/down marks.
 *
 * The table is filled at start-up (rr_add, from the config parser) and is
 * read-only afterwards; the only mutable state is the round-robin counter
 * and one "down until" time per backend, both atomics, so picking a backend
 * takes no lock. This file never opens a socket: it only names addresses.
 *
 * Limits: at most MAX_BACKENDS backends.
 */
#include "pibl.h"

#include <atomic>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct backend {
    struct sockaddr_storage addr;  /* resolved once at start-up */
    socklen_t addr_len;
    char name[MAX_HOST_NAME + 8];  /* "host:port" as written in the config */
    std::atomic<int64_t> down_until; /* monotonic ms; 0 = up */
};

static struct backend g_backends[MAX_BACKENDS];
static int g_n_backends;                       /* entries in g_backends */
static std::atomic<uint64_t> g_next;           /* round-robin counter */
static int g_down_ms = 5000;                   /* how long a mark lasts */

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Split spec into host and port. Accepts "host:port" and "[v6addr]:port".
 * Returns 0, or -1 with the reason in err.
 */
static int
split_host_port(const char *spec, char *host, size_t host_len, char *port, size_t port_len,
    char *err, size_t err_len)
{
    const char *colon, *h = spec;
    size_t hl;

    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(err, err_len, "backend \"%s\": expected [address]:port", spec);
            return -1;
        }
        h = spec + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(spec, ':');
        if (colon == NULL || strchr(spec, ':') != colon) {
            snprintf(err, err_len, "backend \"%s\": expected host:port", spec);
            return -1;
        }
        hl = (size_t)(colon - spec);
    }
    if (hl == 0 || hl >= host_len) {
        snprintf(err, err_len, "backend \"%s\": bad host", spec);
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';

    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || p < 1 || p > 65535) {
        snprintf(err, err_len, "backend \"%s\": port must be 1-65535", spec);
        return -1;
    }
    snprintf(port, port_len, "%ld", p);
    return 0;
}

int
rr_add(const char *spec, char *err, size_t err_len)
{
    char host[MAX_HOST_NAME], port[8];
    struct addrinfo hints, *res = NULL;
    int rc;

    if (g_n_backends >= MAX_BACKENDS) {
        snprintf(err, err_len, "too many backends (at most %d)", MAX_BACKENDS);
        return -1;
    }
    if (split_host_port(spec, host, sizeof host, port, sizeof port, err, err_len) == -1)
        return -1;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, err_len, "backend \"%s\": cannot resolve \"%s\": %s", spec, host,
            gai_strerror(rc));
        return -1;
    }

    struct backend *b = &g_backends[g_n_backends];
    memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
    b->addr_len = res->ai_addrlen;
    snprintf(b->name, sizeof b->name, "%s", spec);
    b->down_until.store(0);
    freeaddrinfo(res);
    g_n_backends++;
    return 0;
}

void
rr_reset(void)
{
    g_n_backends = 0;
    g_next.store(0);
}

int
rr_count(void)
{
    return g_n_backends;
}

void
rr_set_down_time(int seconds)
{
    g_down_ms = seconds * 1000;
}

int
rr_is_down(int i)
{
    int64_t until = g_backends[i].down_until.load(std::memory_order_relaxed);

    return until != 0 && now_ms() < until;
}

/*
 * Each pick, and each skip of a down backend, consumes one tick of the
 * shared counter, so with backends A B C and B down the order is A C A C:
 * the survivors share B's turns instead of C getting two in a row.
 */
int
rr_next(uint64_t tried)
{
    int n = g_n_backends;

    for (int attempt = 0; attempt < n; attempt++) {
        int i = (int)(g_next.fetch_add(1, std::memory_order_relaxed) % (uint64_t)n);
        if ((tried >> i) & 1)
            continue;
        if (rr_is_down(i))
            continue;
        return i;
    }
    /* The counter may have raced past a live backend: sweep once in order. */
    for (int i = 0; i < n; i++)
        if (!((tried >> i) & 1) && !rr_is_down(i))
            return i;
    return -1;
}

void
rr_mark_down(int i)
{
    g_backends[i].down_until.store(now_ms() + g_down_ms);
}

void
rr_mark_up(int i)
{
    if (g_backends[i].down_until.load(std::memory_order_relaxed) != 0)
        g_backends[i].down_until.store(0);
}

const struct sockaddr *
rr_addr(int i, socklen_t *len)
{
    *len = g_backends[i].addr_len;
    return (const struct sockaddr *)&g_backends[i].addr;
}

const char *
rr_name(int i)
{
    return g_backends[i].name;
}
