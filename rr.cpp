/*
 * rr.cpp - the backend table, smooth weighted round robin, up/down marks and
 * per-backend counters.
 *
 * The config names the backends (resolved by rr_resolve while it is read);
 * rr_configure() makes that list the live one, at start-up and on reload.
 * A backend keeps its slot, marks, counters and admin state across reloads
 * as long as its name stays in the config; a removed one leaves rotation at
 * once, and its slot is reused only by a later reload.
 *
 * Picking is nginx's smooth weighted round robin under one short mutex (no
 * I/O inside): with equal weights it is strict round robin in config order,
 * and with weights 5 1 1 it gives A A B A C A A rather than bursts. A backend
 * marked down (passive: a failed connect or timeout, for down_time; active:
 * health checks) or held back (drain or weight=0 in the config; drain or
 * disable from the status page) is left out of the rotation and its turns
 * go to the next backends of the cycle; the cycle itself does not move, so
 * when the backend is back the order is the config's again. Every change of
 * state is logged and timed for the status page.
 *
 * This file never opens a socket: it only names addresses and keeps score.
 * Limits: MAX_BACKENDS slots in all, weights 0..MAX_WEIGHT.
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
    struct backend_conf conf;      /* name, address, weight, drain */
    int active;                    /* in the current config */
    int current;                   /* smooth WRR score, under g_lock */
    std::atomic<int64_t> down_until;   /* passive mark: monotonic ms, 0 = up */
    std::atomic<int> health_down;      /* active mark from health checks */
    std::atomic<int> admin;            /* enum rr_admin */
    std::atomic<int64_t> changed_ms;   /* last change of state, monotonic ms */
    std::atomic<time_t> changed_at;    /* the same, wall clock (shown) */
    std::atomic<uint64_t> n_requests;
    std::atomic<uint64_t> n_failures;
    std::atomic<uint64_t> n_check_failures;
    std::atomic<uint64_t> n_answers[4];    /* 2xx .. 5xx */
    std::atomic<uint64_t> bytes_in, bytes_out;
    std::atomic<int> conns;                /* connections in use */
    std::atomic<time_t> check_at;          /* last probe, wall clock, 0 = none */
    std::atomic<int> check_ok;
    std::atomic<const char *> check_detail;
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
    snprintf(out->address, sizeof out->address, "%s", spec);
    freeaddrinfo(res);
    return 0;
}

/* The backend's state changed now (both clocks: durations and display). */
static void
note_change(struct backend *b, int64_t now_ms)
{
    b->changed_ms.store(now_ms);
    b->changed_at.store(time(NULL));
}

/* Start a slot afresh for a backend it did not hold before. */
static void
slot_reset(struct backend *b, const struct backend_conf *bc)
{
    b->conf = *bc;
    b->current = 0;
    b->down_until.store(0);
    b->health_down.store(0);
    b->admin.store(RR_ADMIN_NONE);
    note_change(b, pibl_now_ms());
    b->n_requests.store(0);
    b->n_failures.store(0);
    b->n_check_failures.store(0);
    for (int i = 0; i < 4; i++)
        b->n_answers[i].store(0);
    b->bytes_in.store(0);
    b->bytes_out.store(0);
    b->check_at.store(0);
    b->check_ok.store(0);
    b->check_detail.store(NULL);
    b->latency_sum_us.store(0);
    for (int i = 0; i < LAT_BUCKETS; i++)
        b->latency_hist[i].store(0);
    b->last_error.store(NULL);
}

/* 1 when the two lines name the same addresses, in the same order. */
static int
same_addresses(const struct backend_conf *a, const struct backend_conf *b)
{
    if (a->n_addrs != b->n_addrs || strcmp(a->address, b->address) != 0)
        return 0;
    for (int k = 0; k < a->n_addrs; k++)
        if (a->addr_len[k] != b->addr_len[k] || memcmp(&a->addr[k], &b->addr[k], a->addr_len[k]) != 0)
            return 0;
    return 1;
}

/* Add name to one of ch's lists (blank-separated; "..." once it is full). */
static void
note_name(char *list, const char *name)
{
    size_t len = strlen(list), nl = strlen(name);

    if (len + nl + 2 < RR_CHANGE_NAMES)
        snprintf(list + len, RR_CHANGE_NAMES - len, "%s%s", len ? " " : "", name);
    else if (len + 5 < RR_CHANGE_NAMES && strcmp(list + len - 3, "...") != 0)
        snprintf(list + len, RR_CHANGE_NAMES - len, " ...");
}

int
rr_configure(const struct pibl_config *cfg, struct rr_changes *ch)
{
    int order[MAX_BACKENDS], n = 0, keep[MAX_BACKENDS] = { 0 };

    memset(ch, 0, sizeof *ch);
    pthread_mutex_lock(&g_lock);
    /* Same name: same slot (marks, counters and pooled connections stay). */
    for (int i = 0; i < cfg->n_backends; i++) {
        const struct backend_conf *bc = &cfg->backends[i];
        int slot = -1;
        for (int s = 0; s < MAX_BACKENDS && slot == -1; s++)
            if (g_backends[s].active && !keep[s] && strcmp(g_backends[s].conf.name, bc->name) == 0)
                slot = s;
        if (slot != -1) {
            struct backend *b = &g_backends[slot];
            int moved = !same_addresses(&b->conf, bc);
            int reweighed = b->conf.weight != bc->weight || b->conf.drain != bc->drain;
            if (moved)
                ch->removed_slots[ch->n_removed_slots++] = slot;   /* old address's pool */
            if (reweighed && b->admin.load() != RR_ADMIN_NONE) {
                b->admin.store(RR_ADMIN_NONE);     /* the file speaks again */
                note_change(b, pibl_now_ms());
            } else if (b->conf.drain != bc->drain) {
                note_change(b, pibl_now_ms());     /* drained or back by the file */
            }
            ch->changed += moved || reweighed;
            if (moved || reweighed)
                note_name(ch->names[2], bc->name);
            b->conf = *bc;
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
        if (g_backends[order[i]].active) {        /* a removed backend's slot */
            ch->removed_slots[ch->n_removed_slots++] = order[i];
            ch->removed++;
            note_name(ch->names[1], g_backends[order[i]].conf.name);
        }
        note_name(ch->names[0], cfg->backends[i].name);
        keep[order[i]] = 1;
        slot_reset(&g_backends[order[i]], &cfg->backends[i]);
        ch->added++;
    }
    for (int s = 0; s < MAX_BACKENDS; s++) {
        if (g_backends[s].active && !keep[s]) {
            ch->removed_slots[ch->n_removed_slots++] = s;
            ch->removed++;
            note_name(ch->names[1], g_backends[s].conf.name);
        }
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

/* The weight a slot runs with: its own, or 1 when an operator enabled a
 * weight=0 backend by hand. */
static int
run_weight(const struct backend *b)
{
    if (b->conf.weight == 0 && b->admin.load(std::memory_order_relaxed) == RR_ADMIN_READY)
        return 1;
    return b->conf.weight;
}

/* 1 when slot i takes no new requests: drained or disabled, in the config
 * or from the status page. */
static int
held_back(const struct backend *b)
{
    int admin = b->admin.load(std::memory_order_relaxed);

    if (admin == RR_ADMIN_NONE)
        return b->conf.drain;
    return admin != RR_ADMIN_READY;
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
        b->current += run_weight(b);
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
 * on a backend that is down, held back or already tried pass to the next
 * turn. With equal weights the next usable backend is at most n turns away;
 * with very uneven weights and heavy backends down it could be a whole
 * period away, so after 2n turns the usable backend with the best score
 * takes the turn (the lock is never held for more than 2n passes over the
 * table).
 */
int
rr_next(uint64_t tried)
{
    uint64_t usable = 0;           /* slots neither tried, down nor held back, read once */
    int slot = -1, total = 0;

    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < g_n_order; k++) {
        int s = g_order[k];
        total += run_weight(&g_backends[s]);
        if (!((tried >> s) & 1) && !rr_is_down(s) && !held_back(&g_backends[s]))
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
rr_mark_down(int i, const char *why)
{
    struct backend *b = &g_backends[i];
    int64_t now = pibl_now_ms(), down_ms = g_down_ms.load();

    if (down_ms == 0)
        return;                    /* down_time = 0: no passive marks */
    int64_t prev = b->down_until.exchange(now + down_ms);
    if (prev == 0) {
        note_change(b, now);
        log_line("pibl: backend %s marked down for %lld s: %s (passive check)", b->conf.name,
            (long long)(down_ms / 1000), why);
    } else if (prev <= now) {                  /* retried after down_time: down since the first */
        log_line("pibl: backend %s still failing: %s; down again for %lld s", b->conf.name, why,
            (long long)(down_ms / 1000));
    }
}

void
rr_mark_up(int i)
{
    struct backend *b = &g_backends[i];

    if (b->down_until.load(std::memory_order_relaxed) == 0)
        return;
    if (b->down_until.exchange(0) != 0) {
        int64_t now = pibl_now_ms();
        double was = (double)(now - b->changed_ms.load()) / 1000.0;
        note_change(b, now);
        log_line("pibl: backend %s is used again: it answered (passive check; marked down %.1f s "
            "before)", b->conf.name, was);
    }
}

void
rr_set_health(int i, int down)
{
    struct backend *b = &g_backends[i];

    if (b->health_down.exchange(down) == down)
        return;
    note_change(b, pibl_now_ms());
    if (!down)
        b->down_until.store(0);    /* probes passed: no passive mark left either */
}

int
rr_is_maint(int i)
{
    return g_backends[i].admin.load(std::memory_order_relaxed) == RR_ADMIN_MAINT;
}

int
rr_others_up(int i)
{
    int up = 0;

    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < g_n_order; k++)
        if (g_order[k] != i && !rr_is_down(g_order[k]) && !held_back(&g_backends[g_order[k]]))
            up++;
    pthread_mutex_unlock(&g_lock);
    return up;
}

int
rr_find(const char *name)
{
    int slot = -1;

    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < g_n_order && slot == -1; k++)
        if (strcmp(g_backends[g_order[k]].conf.name, name) == 0)
            slot = g_order[k];
    pthread_mutex_unlock(&g_lock);
    return slot;
}

static const char *const g_admin_names[] = { "as configured", "enabled", "drain", "disabled" };

void
rr_set_admin(int i, int admin, const char *who)
{
    struct backend *b = &g_backends[i];
    int prev = b->admin.exchange(admin);

    if (prev != admin)
        note_change(b, pibl_now_ms());
    if (admin == RR_ADMIN_NONE)
        log_line("pibl: admin: backend %s back to what the config file says, by %s (was %s)",
            b->conf.name, who, g_admin_names[prev]);
    else
        log_line("pibl: admin: backend %s set to %s by %s (was %s)", b->conf.name,
            g_admin_names[admin], who, g_admin_names[prev]);
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

const char *
rr_address(int i)
{
    return g_backends[i].conf.address;
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
rr_answered(int i, int status, uint64_t bytes_in, uint64_t bytes_out)
{
    struct backend *b = &g_backends[i];

    if (status >= 200 && status < 600)
        b->n_answers[status / 100 - 2].fetch_add(1, std::memory_order_relaxed);
    b->bytes_in.fetch_add(bytes_in, std::memory_order_relaxed);
    b->bytes_out.fetch_add(bytes_out, std::memory_order_relaxed);
}

void
rr_check_result(int i, int ok, const char *why)
{
    struct backend *b = &g_backends[i];

    b->check_ok.store(ok);
    b->check_detail.store(ok ? NULL : why);
    b->check_at.store(time(NULL));
    if (!ok) {
        b->n_check_failures.fetch_add(1, std::memory_order_relaxed);
        b->last_error.store(why, std::memory_order_relaxed);
    }
}

void
rr_conns(int i, int delta)
{
    g_backends[i].conns.fetch_add(delta, std::memory_order_relaxed);
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
    int64_t until = b->down_until.load();

    memset(st, 0, sizeof *st);
    st->name = b->conf.name;
    st->address = b->conf.address;
    st->weight = b->conf.weight;
    st->drain = b->conf.drain;
    st->admin = b->admin.load();
    st->passive_down = until != 0;     /* until it answers again, even once retried */
    st->health_down = b->health_down.load();
    if (st->admin == RR_ADMIN_MAINT)
        st->state = RR_MAINT;
    else if (st->health_down || st->passive_down)
        st->state = RR_DOWN;
    else if (held_back(b))
        st->state = RR_DRAIN;
    else
        st->state = RR_UP;
    st->state_since = b->changed_at.load();
    st->requests = b->n_requests.load();
    st->failures = b->n_failures.load();
    st->check_failures = b->n_check_failures.load();
    for (int k = 0; k < 4; k++)
        st->answers[k] = b->n_answers[k].load();
    st->bytes_in = b->bytes_in.load();
    st->bytes_out = b->bytes_out.load();
    st->active = b->conns.load();
    st->check_at = b->check_at.load();
    st->check_ok = b->check_ok.load();
    st->check_detail = b->check_detail.load();
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
