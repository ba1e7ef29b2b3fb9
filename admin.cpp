/*
 * admin.cpp - the status page on the admin listener (admin_listen,
 * admin_port): an HTML page that refreshes itself, the same data as JSON at
 * /status.json and as Prometheus text at /metrics.
 *
 * Everything shown is read from counters kept elsewhere (rr.cpp per
 * backend, cache.cpp, exchange.cpp); this file only samples the request count
 * once a second for the requests-per-second figure and formats.
 *
 * It does not change anything (no POST, no actions) and answers one request
 * per connection. Limits: ADMIN_HEAD_MAX bytes of request head,
 * ADMIN_TIMEOUT_S to send it, ADMIN_OUT_MAX bytes of page.
 */
#include "admin.h"
#include "cache.h"
#include "exchange.h"
#include "http.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "tunnel.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RATE_WINDOW      10        /* seconds averaged for requests/s */

/* The request count once a second, a ring of RATE_WINDOW + 1 samples. */
static pthread_mutex_t g_rate_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_count[RATE_WINDOW + 1];
static time_t g_when[RATE_WINDOW + 1];
static int g_n_samples, g_next_sample;

void
admin_tick(void)
{
    time_t now = time(NULL);

    pthread_mutex_lock(&g_rate_lock);
    int last = (g_next_sample + RATE_WINDOW) % (RATE_WINDOW + 1);
    if (g_n_samples == 0 || g_when[last] != now) {
        g_count[g_next_sample] = exchange_requests_total();
        g_when[g_next_sample] = now;
        g_next_sample = (g_next_sample + 1) % (RATE_WINDOW + 1);
        if (g_n_samples < RATE_WINDOW + 1)
            g_n_samples++;
    }
    pthread_mutex_unlock(&g_rate_lock);
}

/* Requests per second over the sampled window (0 until two samples). */
static double
request_rate(void)
{
    double rate = 0;

    pthread_mutex_lock(&g_rate_lock);
    if (g_n_samples >= 2) {
        int newest = (g_next_sample + RATE_WINDOW) % (RATE_WINDOW + 1);
        int oldest = g_n_samples == RATE_WINDOW + 1 ? g_next_sample : 0;
        if (g_when[newest] > g_when[oldest])
            rate = (double)(g_count[newest] - g_count[oldest]) /
                (double)(g_when[newest] - g_when[oldest]);
    }
    pthread_mutex_unlock(&g_rate_lock);
    return rate;
}

/* Everything the three formats show, read once per request. */
struct snapshot {
    long uptime;
    int open_connections;
    int open_tunnels;
    uint64_t requests;
    double rps;
    int n_backends;
    struct rr_stats backends[MAX_BACKENDS];
    int cache_on;
    long ttl;
    struct cache_stats cache;
    double hit_ratio;
};

static void
take_snapshot(struct snapshot *s)
{
    int slots[MAX_BACKENDS];

    memset(s, 0, sizeof *s);
    s->uptime = (long)(time(NULL) - pibl_start_time());
    s->open_connections = pibl_open_connections();
    s->open_tunnels = tunnel_open();
    s->requests = exchange_requests_total();
    s->rps = request_rate();
    s->n_backends = rr_active_slots(slots, MAX_BACKENDS);
    for (int i = 0; i < s->n_backends; i++)
        rr_stats(slots[i], &s->backends[i]);
    s->cache_on = cache_enabled();
    s->ttl = cache_ttl();
    cache_get_stats(&s->cache);
    s->hit_ratio = s->cache.lookups ? (double)s->cache.hits / (double)s->cache.lookups : 0.0;
}

/* An output buffer; overflow sticks and the page is then a 500. */
struct out {
    char *buf;
    size_t len;
    int overflow;
};

static void
outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
outf(struct out *o, const char *fmt, ...)
{
    va_list ap;

    if (o->overflow)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, ADMIN_OUT_MAX - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= ADMIN_OUT_MAX - o->len)
        o->overflow = 1;
    else
        o->len += (size_t)n;
}

/* Write s for HTML text or a JSON string: only safe bytes pass. */
static void
out_escaped(struct out *o, const char *s, int json)
{
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '<' || c == '>' || c == '&' || c == '"' || c == '\\' || c < 0x20 || c >= 0x7f)
            outf(o, json ? "\\u%04x" : "&#%d;", c);
        else
            outf(o, "%c", c);
    }
}

static const char *
state_of(const struct rr_stats *b)
{
    return b->health_down || b->passive_down ? "down" : "up";
}

static void
render_html(const struct snapshot *s, struct out *o)
{
    outf(o, "<!DOCTYPE html>\n<html lang=\"es\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"refresh\" content=\"2\"><title>PIBL: estado</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.3em .7em;text-align:right}"
        "th{background:#eee}td.l{text-align:left}.up{color:#070;font-weight:bold}"
        ".down{color:#b00;font-weight:bold}</style></head><body>\n"
        "<h1>PIBL: estado</h1>\n<p>Activo desde hace %ld s &middot; conexiones abiertas: %d "
        "&middot; t&uacute;neles WebSocket: %d &middot; peticiones: %llu &middot; peticiones/s: %.1f</p>\n",
        s->uptime, s->open_connections, s->open_tunnels, (unsigned long long)s->requests, s->rps);
    outf(o, "<h2>Backends</h2>\n<table id=\"backends\"><tr><th>Backend</th><th>Estado</th>"
        "<th>Peso</th><th>Peticiones</th><th>Fallos</th><th>&Uacute;ltimo error</th>"
        "<th>Latencia media (ms)</th><th>p99 (ms)</th><th>T&uacute;neles</th></tr>\n");
    for (int i = 0; i < s->n_backends; i++) {
        const struct rr_stats *b = &s->backends[i];
        outf(o, "<tr><td class=\"l\">");
        out_escaped(o, b->name, 0);
        outf(o, "</td><td class=\"%s\">%s</td><td>%d</td><td>%llu</td><td>%llu</td><td class=\"l\">",
            state_of(b), state_of(b), b->weight, (unsigned long long)b->requests,
            (unsigned long long)b->failures);
        out_escaped(o, b->last_error ? b->last_error : "-", 0);
        outf(o, "</td><td>%.2f</td><td>%.2f</td><td>%d</td></tr>\n", b->avg_ms, b->p99_ms, b->tunnels);
    }
    outf(o, "</table>\n<h2>Cach&eacute;</h2>\n<table id=\"cache\"><tr><th>Estado</th><th>TTL (s)</th>"
        "<th>Entradas</th><th>Bytes</th><th>Aciertos</th><th>Consultas</th><th>Tasa de acierto</th>"
        "</tr>\n<tr><td>%s</td><td>%ld</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td>"
        "<td>%.1f%%</td></tr>\n</table>\n<p><a href=\"/status.json\">JSON</a> &middot; "
        "<a href=\"/metrics\">Prometheus</a></p>\n</body></html>\n",
        s->cache_on ? "activa" : "apagada", s->ttl, (unsigned long long)s->cache.entries,
        (unsigned long long)s->cache.bytes, (unsigned long long)s->cache.hits,
        (unsigned long long)s->cache.lookups, s->hit_ratio * 100.0);
}

static void
render_json(const struct snapshot *s, struct out *o)
{
    outf(o, "{\"uptime_s\":%ld,\"open_connections\":%d,\"open_tunnels\":%d,\"requests_total\":%llu,"
        "\"requests_per_second\":%.2f,\"backends\":[", s->uptime, s->open_connections,
        s->open_tunnels, (unsigned long long)s->requests, s->rps);
    for (int i = 0; i < s->n_backends; i++) {
        const struct rr_stats *b = &s->backends[i];
        outf(o, "%s{\"name\":\"", i ? "," : "");
        out_escaped(o, b->name, 1);
        outf(o, "\",\"state\":\"%s\",\"health_down\":%s,\"weight\":%d,\"requests\":%llu,"
            "\"failures\":%llu,\"last_error\":", state_of(b), b->health_down ? "true" : "false",
            b->weight, (unsigned long long)b->requests, (unsigned long long)b->failures);
        if (b->last_error != NULL) {
            outf(o, "\"");
            out_escaped(o, b->last_error, 1);
            outf(o, "\"");
        } else {
            outf(o, "null");
        }
        outf(o, ",\"avg_ms\":%.3f,\"p99_ms\":%.3f,\"open_tunnels\":%d}", b->avg_ms, b->p99_ms,
            b->tunnels);
    }
    outf(o, "],\"cache\":{\"enabled\":%s,\"ttl_s\":%ld,\"entries\":%llu,\"bytes\":%llu,"
        "\"hits\":%llu,\"lookups\":%llu,\"hit_ratio\":%.4f}}\n", s->cache_on ? "true" : "false",
        s->ttl, (unsigned long long)s->cache.entries, (unsigned long long)s->cache.bytes,
        (unsigned long long)s->cache.hits, (unsigned long long)s->cache.lookups, s->hit_ratio);
}

static void
render_metrics(const struct snapshot *s, struct out *o)
{
    outf(o, "# HELP pibl_uptime_seconds Seconds since PIBL started.\n# TYPE pibl_uptime_seconds gauge\n"
        "pibl_uptime_seconds %ld\n"
        "# HELP pibl_open_connections Client connections open.\n# TYPE pibl_open_connections gauge\n"
        "pibl_open_connections %d\n"
        "# HELP pibl_requests_total Exchanges answered.\n# TYPE pibl_requests_total counter\n"
        "pibl_requests_total %llu\n"
        "# HELP pibl_open_tunnels WebSocket tunnels open.\n# TYPE pibl_open_tunnels gauge\n"
        "pibl_open_tunnels %d\n", s->uptime, s->open_connections, (unsigned long long)s->requests,
        s->open_tunnels);
    static const char *const names[] = {
        "pibl_backend_up", "pibl_backend_requests_total", "pibl_backend_failures_total",
        "pibl_backend_latency_avg_seconds", "pibl_backend_latency_p99_seconds",
        "pibl_backend_open_tunnels",
    };
    static const char *const types[] = { "gauge", "counter", "counter", "gauge", "gauge", "gauge" };
    for (int m = 0; m < 6; m++) {
        outf(o, "# TYPE %s %s\n", names[m], types[m]);
        for (int i = 0; i < s->n_backends; i++) {
            const struct rr_stats *b = &s->backends[i];
            outf(o, "%s{backend=\"", names[m]);
            out_escaped(o, b->name, 1);
            outf(o, "\"} ");
            if (m == 0)
                outf(o, "%d\n", b->health_down || b->passive_down ? 0 : 1);
            else if (m == 1)
                outf(o, "%llu\n", (unsigned long long)b->requests);
            else if (m == 2)
                outf(o, "%llu\n", (unsigned long long)b->failures);
            else if (m == 5)
                outf(o, "%d\n", b->tunnels);
            else
                outf(o, "%.6f\n", (m == 3 ? b->avg_ms : b->p99_ms) / 1000.0);
        }
    }
    outf(o, "# TYPE pibl_cache_entries gauge\npibl_cache_entries %llu\n"
        "# TYPE pibl_cache_bytes gauge\npibl_cache_bytes %llu\n"
        "# TYPE pibl_cache_hits_total counter\npibl_cache_hits_total %llu\n"
        "# TYPE pibl_cache_lookups_total counter\npibl_cache_lookups_total %llu\n",
        (unsigned long long)s->cache.entries, (unsigned long long)s->cache.bytes,
        (unsigned long long)s->cache.hits, (unsigned long long)s->cache.lookups);
}

static int
send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void
reply(int fd, int status, const char *reason, const char *type, const char *body, size_t len,
    int is_head)
{
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n", status, reason, type, len);
    if (send_all(fd, head, (size_t)n) == 0 && !is_head)
        send_all(fd, body, len);
}

/* Read one request head. Returns its length, or -1. */
static long
read_request(int fd, char *buf, size_t cap)
{
    size_t len = 0, scan = 0;

    while (len < cap) {
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        len += (size_t)n;
        long end = http_find_head_end(buf, len, &scan);
        if (end > 0)
            return end;
        if (end == -1)
            return -1;
    }
    return -1;
}

void
admin_serve(int fd)
{
    struct timeval tv = { ADMIN_TIMEOUT_S, 0 };
    char head[ADMIN_HEAD_MAX];
    struct http_request req;
    struct out o = { NULL, 0, 0 };
    struct snapshot *snap = NULL;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    long hl = read_request(fd, head, sizeof head);
    if (hl <= 0 || http_parse_request(head, (size_t)hl, 1024, &req) != 0) {
        static const char bad[] = "bad request\n";
        reply(fd, 400, "Bad Request", "text/plain", bad, sizeof bad - 1, 0);
        goto done;
    }
    {
        int is_head = http_name_is(req.method, req.method_len, "HEAD");
        if (!is_head && !http_name_is(req.method, req.method_len, "GET")) {
            static const char only[] = "only GET and HEAD\n";
            reply(fd, 405, "Method Not Allowed", "text/plain", only, sizeof only - 1, 0);
            goto done;
        }
        size_t pl = req.target_len;
        const char *q = (const char *)memchr(req.target, '?', pl);
        if (q != NULL)
            pl = (size_t)(q - req.target);
        o.buf = (char *)malloc(ADMIN_OUT_MAX);
        snap = (struct snapshot *)malloc(sizeof *snap);
        if (o.buf == NULL || snap == NULL)
            goto done;
        take_snapshot(snap);
        const char *type;
        if ((pl == 1 && req.target[0] == '/') || (pl == 7 && memcmp(req.target, "/status", 7) == 0)) {
            render_html(snap, &o);
            type = "text/html; charset=utf-8";
        } else if (pl == 12 && memcmp(req.target, "/status.json", 12) == 0) {
            render_json(snap, &o);
            type = "application/json";
        } else if (pl == 8 && memcmp(req.target, "/metrics", 8) == 0) {
            render_metrics(snap, &o);
            type = "text/plain; version=0.0.4";
        } else {
            static const char nf[] = "not found: try /, /status.json or /metrics\n";
            reply(fd, 404, "Not Found", "text/plain", nf, sizeof nf - 1, is_head);
            goto done;
        }
        if (o.overflow) {
            static const char big[] = "page too large\n";
            reply(fd, 500, "Internal Server Error", "text/plain", big, sizeof big - 1, is_head);
        } else {
            reply(fd, 200, "OK", type, o.buf, o.len, is_head);
        }
    }
done:
    free(o.buf);
    free(snap);
    close(fd);
}
