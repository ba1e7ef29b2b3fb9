/*
 * rr.cpp - the backend table, smooth weighted round robin, up/down marks and
 * per-backend counters.
 *
 * The config names the backends (resolved by rr_resolve while it is read);
 * rr_configure() makes that list the live one, at start-up and on reload.
 * A backend keeps its slot, marks and counters across reloads as long as its
 * name stays in the config; a removed one leaves rotation at once, and its
 * slot is reused only by a later reload.
 *
 * Picking is nginx's smooth weighted round robin under one short mutex (no
 * I/O inside): with equal weights it is strict round robin in config order,
 * and with weights 5 1 1 it gives A A B A C A A rather than bursts. A backend
 * marked down (passive: a failed connect or timeout, for down_time; active:
 * health checks) is left out of the rotation and its turns go to the next
 * backends of the cycle; the cycle itself does not move, so when the backend
 * is back the order is the config's again.
 *
 * This file never opens a socket: it only names addresses and keeps score.
 * Limits: MAX_BACKENDS slots in all, weights 1..MAX_WEIGHT.
 */
#include "rr.h"
#include "log.h"
#include "pibl.h"

#include <atomic>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LAT_BUCKETS 64             /* latency histogram, half-octave buckets */

struct backend {
    struct backend_conf conf;      /* name, weight, address */
    int active;                    /* in the current config */
    int current;                   /* smooth WRR score, under g_lock */
    std::atomic<int64_t> down_until;   /* passive mark: monotonic ms, 0 = up */
    std::atomic<int> health_down;      /* active mark from health checks */
    std::atomic<uint64_t> n_requests;
    std::atomic<uint64_t> n_failures;
    std::atomic<uint64_t> latency_sum_us;
    std::atomic<uint64_t> latency_hist[LAT_BUCKETS];
    std::atomic<const char *> last_error;  /* a static string, or NULL */
    std::atomic<int> tunnels;          /* WebSocket tunnels open now */
};

static struct backend g_backends[MAX_BACKENDS];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;  /* order and WRR scores */
static int g_order[MAX_BACKENDS];  /* active slots in config order */
static int g_n_order;
static std::atomic<int> g_down_ms{5000};

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
rr_resolve(const char *spec, int weight, struct backend_conf *out, char *err, size_t err_len)
{
    char host[MAX_HOST_NAME], port[8];
    struct addrinfo hints, *res = NULL;

    if (strlen(spec) >= sizeof out->name) {
        snprintf(err, err_len, "backend \"%.40s...\": name too long", spec);
        return -1;
    }
    if (split_host_port(spec, host, sizeof host, port, sizeof port, err, err_len) == -1)
        return -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, err_len, "backend \"%s\": cannot resolve \"%s\": %s", spec, host,
            gai_strerror(rc));
        return -1;
    }
    memset(out, 0, sizeof *out);
    for (struct addrinfo *ai = res; ai != NULL && out->n_addrs < MAX_BACKEND_ADDRS; ai = ai->ai_next) {
        memcpy(&out->addr[out->n_addrs], ai->ai_addr, ai->ai_addrlen);
        out->addr_len[out->n_addrs++] = ai->ai_addrlen;
    }
    out->weight = weight;
    snprintf(out->name, sizeof out->name, "%s", spec);
    freeaddrinfo(res);
    return 0;
}

/* Start a slot afresh for a backend it did not hold before. */
static void
slot_reset(struct backend *b, const struct backend_conf *bc)
{
    b->conf = *bc;
    b->current = 0;
    b->down_until.store(0);
    b->health_down.store(0);
    b->n_requests.store(0);
    b->n_failures.store(0);
    b->latency_sum_us.store(0);
    for (int i = 0; i < LAT_BUCKETS; i++)
        b->latency_hist[i].store(0);
    b->last_error.store(NULL);
}

int
rr_configure(const struct pibl_config *cfg, int *removed, int *n_removed)
{
    int order[MAX_BACKENDS], n = 0, keep[MAX_BACKENDS] = { 0 };

    *n_removed = 0;
    pthread_mutex_lock(&g_lock);
    /* Same name: same slot (marks, counters and pooled connections stay). */
    for (int i = 0; i < cfg->n_backends; i++) {
        const struct backend_conf *bc = &cfg->backends[i];
        int slot = -1;
        for (int s = 0; s < MAX_BACKENDS && slot == -1; s++)
            if (g_backends[s].conf.name[0] != '\0' && !keep[s] &&
                strcmp(g_backends[s].conf.name, bc->name) == 0)
                slot = s;
        if (slot != -1) {
            g_backends[slot].conf = *bc;   /* weight or address may change */
            keep[slot] = 1;
        }
        order[n++] = slot;
    }
    /* New names take free slots, then slots of backends being removed. */
    for (int i = 0; i < n; i++) {
        if (order[i] != -1)
            continue;
        for (int pass = 0; pass < 2 && order[i] == -1; pass++)
            for (int s = 0; s < MAX_BACKENDS && order[i] == -1; s++)
                if (!keep[s] && (pass == 1 || g_backends[s].conf.name[0] == '\0'))
                    order[i] = s;
        if (order[i] == -1) {
            pthread_mutex_unlock(&g_lock);
            return -1;
        }
        keep[order[i]] = 1;
        slot_reset(&g_backends[order[i]], &cfg->backends[i]);
    }
    for (int s = 0; s < MAX_BACKENDS; s++) {
        if (g_backends[s].active && !keep[s])
            removed[(*n_removed)++] = s;
        g_backends[s].active = keep[s];
        g_backends[s].current = 0;
    }
    memcpy(g_order, order, sizeof(int) * (size_t)n);
    g_n_order = n;
    g_down_ms.store(cfg->down_time * 1000);
    pthread_mutex_unlock(&g_lock);
    return 0;
}

int
rr_count(void)
{
    return g_n_order;
}

int
rr_is_down(int i)
{
    int64_t until = g_backends[i].down_until.load(std::memory_order_relaxed);

    if (g_backends[i].health_down.load(std::memory_order_relaxed))
        return 1;
    return until != 0 && pibl_now_us() / 1000 < until;
}

/* One turn of smooth weighted round robin over every configured backend,
 * usable or not; total is the sum of their weights. Returns the slot whose
 * turn it is (-1 with no backend). Under g_lock. */
static int
wrr_turn(int total)
{
    struct backend *best = NULL;
    int best_slot = -1;

    for (int k = 0; k < g_n_order; k++) {
        int s = g_order[k];
        struct backend *b = &g_backends[s];
        b->current += b->conf.weight;
        if (best == NULL || b->current > best->current) {
            best = b;
            best_slot = s;
        }
    }
    if (best != NULL)
        best->current -= total;
    return best_slot;
}

/*
 * The schedule runs over every configured backend, so a backend that is down
 * for a while, then back, finds the cycle where it left it: turns that fall
 * on a backend that is down (or already tried) pass to the next turn. With
 * equal weights the next usable backend is at most n turns away; with very
 * uneven weights and heavy backends down it could be a whole period away,
 * so after 2n turns the usable backend with the best score takes the turn
 * (the lock is never held for more than 2n passes over the table).
 */
int
rr_next(uint64_t tried)
{
    uint64_t usable = 0;           /* slots neither tried nor down, read once */
    int slot = -1, total = 0;

    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < g_n_order; k++) {
        int s = g_order[k];
        total += g_backends[s].conf.weight;
        if (!((tried >> s) & 1) && !rr_is_down(s))
            usable |= (uint64_t)1 << s;
    }
    for (int turn = 0; usable != 0 && turn < 2 * g_n_order && slot == -1; turn++) {
        int s = wrr_turn(total);
        if ((usable >> s) & 1)
            slot = s;
    }
    if (usable != 0 && slot == -1) {
        for (int k = 0; k < g_n_order; k++) {
            int s = g_order[k];
            if (((usable >> s) & 1) && (slot == -1 || g_backends[s].current > g_backends[slot].current))
                slot = s;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return slot;
}

void
rr_mark_down(int i)
{
    g_backends[i].down_until.store(pibl_now_us() / 1000 + g_down_ms.load());
}

void
rr_mark_up(int i)
{
    if (g_backends[i].down_until.load(std::memory_order_relaxed) != 0)
        g_backends[i].down_until.store(0);
}

void
rr_set_health(int i, int down)
{
    g_backends[i].health_down.store(down);
}

int
rr_others_up(int i)
{
    int up = 0;

    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < g_n_order; k++)
        if (g_order[k] != i && !rr_is_down(g_order[k]))
            up++;
    pthread_mutex_unlock(&g_lock);
    return up;
}

int
rr_active_slots(int *slots, int max)
{
    pthread_mutex_lock(&g_lock);
    int n = g_n_order < max ? g_n_order : max;
    memcpy(slots, g_order, sizeof(int) * (size_t)n);
    pthread_mutex_unlock(&g_lock);
    return n;
}

const struct sockaddr *
rr_addr(int i, int k, socklen_t *len)
{
    const struct backend_conf *bc = &g_backends[i].conf;

    if (k < 0 || k >= bc->n_addrs)
        return NULL;
    *len = bc->addr_len[k];
    return (const struct sockaddr *)&bc->addr[k];
}

const char *
rr_name(int i)
{
    return g_backends[i].conf.name;
}

int
rr_is_active(int i)
{
    return g_backends[i].active;
}

/* Half-octave bucket of a latency: 1 us, 1.4, 2, 2.8, 4 ... */
static int
latency_bucket(uint64_t us)
{
    if (us < 1)
        us = 1;
    int msb = 63 - __builtin_clzll(us);
    int half = msb > 0 ? (int)((us >> (msb - 1)) & 1) : 0;
    int b = msb * 2 + half;
    return b < LAT_BUCKETS ? b : LAT_BUCKETS - 1;
}

/* Upper bound of bucket b in microseconds. */
static double
bucket_top(int b)
{
    double v = (double)(1ULL << (b / 2));
    return b % 2 ? v * 2.0 : v * 1.5;
}

void
rr_record(int i, int ok, int64_t latency_us, const char *error)
{
    struct backend *b = &g_backends[i];

    b->n_requests.fetch_add(1, std::memory_order_relaxed);
    if (!ok) {
        b->n_failures.fetch_add(1, std::memory_order_relaxed);
        if (error != NULL)
            b->last_error.store(error, std::memory_order_relaxed);
        return;
    }
    uint64_t us = latency_us > 0 ? (uint64_t)latency_us : 0;
    b->latency_sum_us.fetch_add(us, std::memory_order_relaxed);
    b->latency_hist[latency_bucket(us)].fetch_add(1, std::memory_order_relaxed);
}

void
rr_set_error(int i, const char *error)
{
    g_backends[i].last_error.store(error, std::memory_order_relaxed);
}

void
rr_tunnels(int i, int delta)
{
    g_backends[i].tunnels.fetch_add(delta, std::memory_order_relaxed);
}

void
rr_stats(int i, struct rr_stats *st)
{
    struct backend *b = &g_backends[i];
    uint64_t hist[LAT_BUCKETS], n_ok = 0;

    memset(st, 0, sizeof *st);
    st->name = b->conf.name;
    st->weight = b->conf.weight;
    st->passive_down = b->down_until.load() != 0 && pibl_now_us() / 1000 < b->down_until.load();
    st->health_down = b->health_down.load();
    st->requests = b->n_requests.load();
    st->failures = b->n_failures.load();
    st->last_error = b->last_error.load();
    st->tunnels = b->tunnels.load(std::memory_order_relaxed);
    for (int k = 0; k < LAT_BUCKETS; k++) {
        hist[k] = b->latency_hist[k].load();
        n_ok += hist[k];
    }
    if (n_ok == 0)
        return;
    st->avg_ms = (double)b->latency_sum_us.load() / (double)n_ok / 1000.0;
    uint64_t want = n_ok - n_ok / 100, seen = 0;   /* 99th percentile */
    for (int k = 0; k < LAT_BUCKETS; k++) {
        seen += hist[k];
        if (seen >= want) {
            st->p99_ms = bucket_top(k) / 1000.0;
            break;
        }
    }
}
