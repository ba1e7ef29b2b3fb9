/*
 * health.cpp - active health checks: a thread that asks every backend for
 * health_check (a path) each health_interval seconds and takes a backend
 * out of the rotation after health_fall failed probes in a row, and puts it
 * back after health_rise good ones.
 *
 * Each backend is probed in a thread of its own, health_interval after its
 * last probe ended, so that one that hangs for connect_timeout delays no
 * other's probes.
 * A probe is one HTTP/1.1 GET on a fresh connection with Connection: close;
 * an answer head that http_parse_response() accepts, with a 2xx or 3xx
 * status, is good; anything else (refused, timeout after connect_timeout,
 * 4xx/5xx, a malformed or cut head) is a failure. The passive marks of the
 * request path (rr_mark_down) apply as well; the two are independent.
 *
 * It never takes out the last backend still up: with no alternative, a
 * failing backend stays in rotation (logged), so that a health path that is
 * wrong or a flapping check cannot turn every request into a 503.
 * Limits: reads at most PROBE_HEAD_MAX bytes of each answer (its head).
 */
#include "health.h"
#include "http.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "upstream.h"

#include <atomic>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>


#define HEALTH_TICK_MS 100                 /* how often the schedule is looked at */

static int g_fails[MAX_BACKENDS];          /* failed probes in a row */
static int g_goods[MAX_BACKENDS];          /* good probes in a row */
static int g_kept_warned[MAX_BACKENDS];    /* "last backend kept" said once */
static char g_names[MAX_BACKENDS][MAX_HOST_NAME + 8];  /* who held the slot */

static void
set_timeouts(int fd, int seconds)
{
    struct timeval tv = { seconds, 0 };

    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/*
 * Probe slot i once. Returns 1 when it answered 2xx/3xx, 0 otherwise with
 * *why naming the failure (a static string).
 */
static int
probe(const struct pibl_config *cfg, int i, const char **why)
{
    char req[512], ans[PROBE_HEAD_MAX];
    struct http_response resp;
    size_t got = 0, scan = 0;
    long head_len = -2;
    int ok = 0;

    int fd = upstream_connect(i, cfg->connect_timeout * 1000);
    if (fd == -1) {
        *why = errno == ETIMEDOUT ? "health check: connect timed out" :
            errno == ECONNREFUSED ? "health check: refused" : "health check: cannot connect";
        return 0;
    }
    set_timeouts(fd, cfg->connect_timeout);
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pibl-health-check\r\n"
        "Connection: close\r\n\r\n", cfg->health_check, rr_address(i));
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        *why = "health check: send failed";
        goto done;
    }
    /* The answer's head, parsed as the proxy parses any backend's. */
    while (head_len == -2 && got < sizeof ans) {
        ssize_t r = recv(fd, ans + got, sizeof ans - got, 0);
        if (r == -1 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        head_len = http_find_head_end(ans, got, &scan);
    }
    if (head_len <= 0 || http_parse_response(ans, (size_t)head_len, &resp) == -1) {
        *why = got == 0 ? "health check: no answer" : "health check: bad answer";
        goto done;
    }
    ok = resp.status >= 200 && resp.status < 400;
    if (!ok)
        *why = "health check: error status";
done:
    close(fd);
    return ok;
}

/* Apply one probe result to slot i, logging every change of state. */
static void
account(const struct pibl_config *cfg, int i, int ok, const char *why)
{
    rr_check_result(i, ok, why);
    if (ok) {
        g_fails[i] = 0;
        g_kept_warned[i] = 0;
        struct rr_stats st;
        rr_stats(i, &st);
        if (++g_goods[i] >= cfg->health_rise && st.health_down) {
            rr_set_health(i, 0);
            log_line("pibl: health: backend %s is back (%d good probes of %s)", rr_name(i),
                g_goods[i], cfg->health_check);
        }
        return;
    }
    g_goods[i] = 0;
    if (++g_fails[i] < cfg->health_fall)
        return;
    if (rr_others_up(i) == 0) {
        if (!g_kept_warned[i])
            log_line("pibl: health: backend %s fails (%s) but it is the last one up: kept in "
                "rotation", rr_name(i), why);
        g_kept_warned[i] = 1;
        return;
    }
    if (!rr_is_down(i))
        log_line("pibl: health: backend %s taken out after %d failed probes (%s)", rr_name(i),
            g_fails[i], why);
    rr_set_health(i, 1);
}

/* One probe, in a thread of its own: a backend that hangs for
 * connect_timeout holds up no other's schedule. */
struct probe_job {
    const struct pibl_config *cfg;
    int slot;
    char name[MAX_HOST_NAME + 8];  /* the backend the slot held when it started */
};

static pthread_mutex_t g_account_lock = PTHREAD_MUTEX_INITIALIZER;
static std::atomic<int> g_busy[MAX_BACKENDS];          /* a probe in flight */
static std::atomic<int64_t> g_done_at[MAX_BACKENDS];   /* ms its last probe ended */

static void *
probe_main(void *arg)
{
    struct probe_job *j = (struct probe_job *)arg;
    const char *why = NULL;
    int ok = probe(j->cfg, j->slot, &why);

    /* One result at a time, so that "never the last one up" holds when
     * several backends fail together; dropped if the slot changed hands. */
    pthread_mutex_lock(&g_account_lock);
    if (strcmp(rr_name(j->slot), j->name) == 0 && strcmp(g_names[j->slot], j->name) == 0)
        account(j->cfg, j->slot, ok, why);
    pthread_mutex_unlock(&g_account_lock);
    g_done_at[j->slot].store(pibl_now_ms());
    g_busy[j->slot].store(0);
    free(j);
    return NULL;
}

static void *
health_main(void *arg)
{
    int slots[MAX_BACKENDS];

    (void)arg;
    for (;;) {
        const struct pibl_config *cfg = pibl_config_now();
        int n = rr_active_slots(slots, MAX_BACKENDS);
        int64_t now = pibl_now_ms();
        for (int k = 0; k < n; k++) {
            int i = slots[k];
            pthread_mutex_lock(&g_account_lock);
            if (strcmp(g_names[i], rr_name(i)) != 0) {   /* a new backend in this slot */
                snprintf(g_names[i], sizeof g_names[i], "%s", rr_name(i));
                g_fails[i] = g_goods[i] = g_kept_warned[i] = 0;
            }
            pthread_mutex_unlock(&g_account_lock);
            if (cfg->health_check[0] == '\0') {
                rr_set_health(i, 0);            /* checks turned off by a reload */
                continue;
            }
            /* Disabled by hand: not probed. Else one probe each
             * health_interval after the last one ended. */
            if (rr_is_maint(i) || g_busy[i].load() ||
                now - g_done_at[i].load() < (int64_t)cfg->health_interval * 1000)
                continue;
            struct probe_job *j = (struct probe_job *)malloc(sizeof *j);
            if (j == NULL)
                continue;
            j->cfg = cfg;
            j->slot = i;
            snprintf(j->name, sizeof j->name, "%s", g_names[i]);
            g_busy[i].store(1);
            if (pibl_spawn(probe_main, j) == -1)
                probe_main(j);                  /* no thread to spare: probe here */
        }
        usleep(cfg->health_check[0] != '\0' ? HEALTH_TICK_MS * 1000 : 1000000);
    }
    return NULL;
}

int
health_start(void)
{
    return pibl_spawn(health_main, NULL);
}
