/*
 * admin.cpp - the status page on the admin listener (admin_listen,
 * admin_port): an HTML page that refreshes itself, the same data as JSON at
 * /status.json, as CSV at /status.csv and as Prometheus text at /metrics.
 *
 * Everything shown is read from counters kept elsewhere (rr.cpp per
 * backend, cache.cpp, exchange.cpp); this file only samples the request count
 * once a second for the requests-per-second figure and formats.
 *
 * Its one action, POST /backend, drains, disables or enables a backend at
 * run time (rr_set_admin), for clients listed in admin_allow only, and
 * never for a browser's cross-site request. One request per connection.
 * Limits: ADMIN_HEAD_MAX bytes of request head, ADMIN_FORM_MAX of form,
 * ADMIN_TIMEOUT_S to send them, ADMIN_OUT_MAX bytes of page.
 */
#include "admin.h"
#include "cache.h"
#include "exchange.h"
#include "http.h"
#include "httpdate.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"
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
    const char *cache_off;         /* why the cache is off, or NULL */
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
    s->cache_off = cache_off_reason();
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

static const char *const g_state_names[] = { "up", "down", "drain", "maint" };
static const char *const g_admin_names[] = { "none", "ready", "drain", "maint" };

static const char *
state_of(const struct rr_stats *b)
{
    return g_state_names[b->state];
}

/* t as "2026-11-27T02:30:04Z" (UTC), or "" for 0. */
static void
iso_time(time_t t, char *buf, size_t len)
{
    struct tm tm;

    buf[0] = '\0';
    if (t != 0 && gmtime_r(&t, &tm) != NULL)
        strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A duration for people: "45 s", "3 min 20 s", "2 h 5 min", "3 d 4 h". */
static void
out_duration(struct out *o, long s)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        outf(o, "%ld s", s);
    else if (s < 3600)
        outf(o, "%ld min %ld s", s / 60, s % 60);
    else if (s < 86400)
        outf(o, "%ld h %ld min", s / 3600, s % 3600 / 60);
    else
        outf(o, "%ld d %ld h", s / 86400, s % 86400 / 3600);
}

/* A byte count for people: 512 B, 1.5 KB, 20.0 MB (powers of 1024). */
static void
out_bytes(struct out *o, uint64_t n)
{
    static const char *const unit[] = { "KB", "MB", "GB", "TB" };
    double v = (double)n;
    int u = -1;

    while (v >= 1024.0 && u < 3) {
        v /= 1024.0;
        u++;
    }
    if (u < 0)
        outf(o, "%llu B", (unsigned long long)n);
    else
        outf(o, "%.1f %s", v, unit[u]);
}

static void
render_html(const struct snapshot *s, struct out *o)
{
    time_t now = time(NULL);
    char when[32];

    outf(o, "<!DOCTYPE html>\n<html lang=\"es\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"refresh\" content=\"2\"><title>PIBL: estado</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.3em .5em;text-align:right;font-size:.9em}td{white-space:nowrap}"
        "th{background:#eee}td.l{text-align:left}.up{color:#070;font-weight:bold}"
        ".down{color:#b00;font-weight:bold}.drain,.maint{color:#a60;font-weight:bold}"
        "small{color:#666}.n{white-space:nowrap}form{margin:0;white-space:nowrap}button{font-size:.8em}</style></head><body>\n"
        "<h1>PIBL: estado</h1>\n<p>Activo desde hace ");
    out_duration(o, s->uptime);
    outf(o, " &middot; conexiones abiertas: %d &middot; t&uacute;neles WebSocket: %d &middot; "
        "peticiones: %llu &middot; peticiones/s: %.1f</p>\n", s->open_connections, s->open_tunnels,
        (unsigned long long)s->requests, s->rps);
    outf(o, "<h2>Backends</h2>\n<table id=\"backends\"><tr><th>Backend</th><th>Estado</th>"
        "<th>Desde</th><th>Peso</th><th>&Uacute;ltima sonda</th><th>Peticiones</th><th>2xx</th>"
        "<th>3xx</th><th>4xx</th><th>5xx</th><th>Fallos</th><th>Sondas fallidas</th>"
        "<th>Bytes in</th><th>Bytes out</th><th>Conexiones</th><th>T&uacute;neles</th>"
        "<th>Latencia media (ms)</th><th>p99 (ms)</th><th>&Uacute;ltimo error</th>"
        "<th>Acciones</th></tr>\n");
    for (int i = 0; i < s->n_backends; i++) {
        const struct rr_stats *b = &s->backends[i];
        outf(o, "<tr><td class=\"l\">");
        out_escaped(o, b->name, 0);
        if (strcmp(b->name, b->address) != 0) {
            outf(o, " <br><small>");
            out_escaped(o, b->address, 0);
            outf(o, "</small>");
        }
        iso_time(b->state_since, when, sizeof when);
        outf(o, "</td><td class=\"l %s\">%s</td><td class=\"l n\">hace ", state_of(b), state_of(b));
        out_duration(o, (long)(now - b->state_since));
        outf(o, " <small>(%.8s UTC)</small>", when[0] ? when + 11 : "?");
        outf(o, "</td><td>%d</td><td class=\"l n\">", b->weight);
        if (b->check_at == 0) {
            outf(o, "-");
        } else {
            outf(o, "%s, hace ", b->check_ok ? "ok" : "fallo");
            out_duration(o, (long)(now - b->check_at));
        }
        outf(o, "</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td>"
            "<td>%llu</td><td>", (unsigned long long)b->requests, (unsigned long long)b->answers[0],
            (unsigned long long)b->answers[1], (unsigned long long)b->answers[2],
            (unsigned long long)b->answers[3], (unsigned long long)b->failures,
            (unsigned long long)b->check_failures);
        out_bytes(o, b->bytes_in);
        outf(o, "</td><td>");
        out_bytes(o, b->bytes_out);
        outf(o, "</td><td>%d</td><td>%d</td><td>%.2f</td><td>%.2f</td><td class=\"l\">", b->active,
            b->tunnels, b->avg_ms, b->p99_ms);
        out_escaped(o, b->last_error ? b->last_error : "-", 0);
        outf(o, "</td><td><form method=\"post\" action=\"/backend\"><input type=\"hidden\" "
            "name=\"name\" value=\"");
        out_escaped(o, b->name, 0);
        outf(o, "\"><button name=\"action\" value=\"drain\">drenar</button> <button name=\"action\" "
            "value=\"enable\">activar</button> <button name=\"action\" value=\"disable\">"
            "desactivar</button></form></td></tr>\n");
    }
    outf(o, "</table>\n<p><small>Bytes in: lo que PIBL envi&oacute; al backend (peticiones); bytes "
        "out: lo que el backend respondi&oacute; (cuerpos). Drenar: no recibe peticiones nuevas (las "
        "que tiene terminan); desactivar: tampoco se sondea; activar: vuelve a la rotaci&oacute;n. "
        "Solo desde admin_allow.</small></p>\n");
    outf(o, "<h2>Cach&eacute;</h2>\n<table id=\"cache\"><tr><th>Estado</th><th>TTL (s)</th>"
        "<th>Entradas</th><th>Bytes</th><th>Aciertos</th><th>Consultas</th><th>Tasa de acierto</th>"
        "</tr>\n<tr><td class=\"l\">");
    if (s->cache_on) {
        outf(o, "activa");
    } else {
        outf(o, "apagada (");
        out_escaped(o, s->cache_off ? s->cache_off : "-", 0);
        outf(o, ")");
    }
    outf(o, "</td><td>%ld</td><td>%llu</td><td>%llu</td><td>%llu</td><td>%llu</td><td>", s->ttl,
        (unsigned long long)s->cache.entries, (unsigned long long)s->cache.bytes,
        (unsigned long long)s->cache.hits, (unsigned long long)s->cache.lookups);
    if (s->cache_on)
        outf(o, "%.1f%%", s->hit_ratio * 100.0);
    else
        outf(o, "apagada");
    outf(o, "</td></tr>\n</table>\n<p><a href=\"/status.json\">JSON</a> &middot; "
        "<a href=\"/status.csv\">CSV</a> &middot; <a href=\"/metrics\">Prometheus</a></p>\n"
        "</body></html>\n");
}

/* A JSON string, or null. */
static void
out_json_string(struct out *o, const char *v)
{
    if (v == NULL) {
        outf(o, "null");
        return;
    }
    outf(o, "\"");
    out_escaped(o, v, 1);
    outf(o, "\"");
}

static void
render_json(const struct snapshot *s, struct out *o)
{
    time_t now = time(NULL);
    char when[32];

    outf(o, "{\"uptime_s\":%ld,\"open_connections\":%d,\"open_tunnels\":%d,\"requests_total\":%llu,"
        "\"requests_per_second\":%.2f,\"backends\":[", s->uptime, s->open_connections,
        s->open_tunnels, (unsigned long long)s->requests, s->rps);
    for (int i = 0; i < s->n_backends; i++) {
        const struct rr_stats *b = &s->backends[i];
        outf(o, "%s{\"name\":", i ? "," : "");
        out_json_string(o, b->name);
        outf(o, ",\"address\":");
        out_json_string(o, b->address);
        iso_time(b->state_since, when, sizeof when);
        outf(o, ",\"state\":\"%s\",\"state_since\":\"%s\",\"state_for_s\":%ld,\"health_down\":%s,"
            "\"weight\":%d,\"drain\":%s,\"admin\":\"%s\",\"last_check\":", state_of(b), when,
            (long)(now - b->state_since), b->health_down ? "true" : "false", b->weight,
            b->drain ? "true" : "false", g_admin_names[b->admin]);
        if (b->check_at == 0) {
            outf(o, "null");
        } else {
            iso_time(b->check_at, when, sizeof when);
            outf(o, "{\"ok\":%s,\"at\":\"%s\",\"detail\":", b->check_ok ? "true" : "false", when);
            out_json_string(o, b->check_detail);
            outf(o, "}");
        }
        outf(o, ",\"requests\":%llu,\"answers\":{\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu},"
            "\"failures\":%llu,\"check_failures\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
            "\"active_connections\":%d,\"last_error\":", (unsigned long long)b->requests,
            (unsigned long long)b->answers[0], (unsigned long long)b->answers[1],
            (unsigned long long)b->answers[2], (unsigned long long)b->answers[3],
            (unsigned long long)b->failures, (unsigned long long)b->check_failures,
            (unsigned long long)b->bytes_in, (unsigned long long)b->bytes_out, b->active);
        out_json_string(o, b->last_error);
        outf(o, ",\"avg_ms\":%.3f,\"p99_ms\":%.3f,\"open_tunnels\":%d}", b->avg_ms, b->p99_ms,
            b->tunnels);
    }
    outf(o, "],\"cache\":{\"enabled\":%s,\"off_reason\":", s->cache_on ? "true" : "false");
    out_json_string(o, s->cache_off);
    outf(o, ",\"ttl_s\":%ld,\"entries\":%llu,\"bytes\":%llu,\"hits\":%llu,\"lookups\":%llu,"
        "\"hit_ratio\":", s->ttl, (unsigned long long)s->cache.entries,
        (unsigned long long)s->cache.bytes, (unsigned long long)s->cache.hits,
        (unsigned long long)s->cache.lookups);
    if (s->cache_on)
        outf(o, "%.4f}}\n", s->hit_ratio);
    else
        outf(o, "null}}\n");
}

/* One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. */
static void
out_csv(struct out *o, const char *v, int last)
{
    if (v == NULL)
        v = "";
    if (strpbrk(v, ",\"\r\n") == NULL) {
        outf(o, "%s", v);
    } else {
        outf(o, "\"");
        for (; *v != '\0'; v++)
            outf(o, *v == '"' ? "\"\"" : "%c", *v);
        outf(o, "\"");
    }
    outf(o, last ? "\r\n" : ",");
}

/* One row a backend, the same fields as /status.json (CSV, RFC 4180, CRLF). */
static void
render_csv(const struct snapshot *s, struct out *o)
{
    char when[32], check_at[32], num[256];

    outf(o, "name,address,state,state_since,weight,drain,admin,last_check,last_check_at,requests,"
        "answers_2xx,answers_3xx,answers_4xx,answers_5xx,failures,check_failures,bytes_in,bytes_out,"
        "active_connections,open_tunnels,avg_ms,p99_ms,last_error\r\n");
    for (int i = 0; i < s->n_backends; i++) {
        const struct rr_stats *b = &s->backends[i];
        iso_time(b->state_since, when, sizeof when);
        iso_time(b->check_at, check_at, sizeof check_at);
        out_csv(o, b->name, 0);
        out_csv(o, b->address, 0);
        outf(o, "%s,%s,%d,%d,%s,%s,%s,", state_of(b), when, b->weight, b->drain,
            g_admin_names[b->admin], b->check_at == 0 ? "" : b->check_ok ? "ok" : "failed", check_at);
        snprintf(num, sizeof num, "%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%d,%d,%.3f,%.3f",
            (unsigned long long)b->requests, (unsigned long long)b->answers[0],
            (unsigned long long)b->answers[1], (unsigned long long)b->answers[2],
            (unsigned long long)b->answers[3], (unsigned long long)b->failures,
            (unsigned long long)b->check_failures, (unsigned long long)b->bytes_in,
            (unsigned long long)b->bytes_out, b->active, b->tunnels, b->avg_ms, b->p99_ms);
        outf(o, "%s,", num);
        out_csv(o, b->last_error, 1);
    }
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
    enum { M_UP, M_REQ, M_FAIL, M_AVG, M_P99, M_TUN, M_CHECKFAIL, M_IN, M_OUT, M_ACTIVE, M_N };
    static const char *const names[M_N] = {
        "pibl_backend_up", "pibl_backend_requests_total", "pibl_backend_failures_total",
        "pibl_backend_latency_avg_seconds", "pibl_backend_latency_p99_seconds",
        "pibl_backend_open_tunnels", "pibl_backend_check_failures_total",
        "pibl_backend_bytes_in_total", "pibl_backend_bytes_out_total",
        "pibl_backend_active_connections",
    };
    static const char *const types[M_N] = { "gauge", "counter", "counter", "gauge", "gauge", "gauge",
        "counter", "counter", "counter", "gauge" };
    for (int m = 0; m < M_N; m++) {
        outf(o, "# TYPE %s %s\n", names[m], types[m]);
        for (int i = 0; i < s->n_backends; i++) {
            const struct rr_stats *b = &s->backends[i];
            outf(o, "%s{backend=\"", names[m]);
            out_escaped(o, b->name, 1);
            outf(o, "\"} ");
            switch (m) {
            case M_UP: outf(o, "%d\n", b->state == RR_UP); break;
            case M_REQ: outf(o, "%llu\n", (unsigned long long)b->requests); break;
            case M_FAIL: outf(o, "%llu\n", (unsigned long long)b->failures); break;
            case M_AVG: outf(o, "%.6f\n", b->avg_ms / 1000.0); break;
            case M_P99: outf(o, "%.6f\n", b->p99_ms / 1000.0); break;
            case M_TUN: outf(o, "%d\n", b->tunnels); break;
            case M_CHECKFAIL: outf(o, "%llu\n", (unsigned long long)b->check_failures); break;
            case M_IN: outf(o, "%llu\n", (unsigned long long)b->bytes_in); break;
            case M_OUT: outf(o, "%llu\n", (unsigned long long)b->bytes_out); break;
            default: outf(o, "%d\n", b->active); break;
            }
        }
    }
    outf(o, "# TYPE pibl_backend_answers_total counter\n");
    for (int i = 0; i < s->n_backends; i++) {
        for (int k = 0; k < 4; k++) {
            outf(o, "pibl_backend_answers_total{backend=\"");
            out_escaped(o, s->backends[i].name, 1);
            outf(o, "\",class=\"%dxx\"} %llu\n", k + 2, (unsigned long long)s->backends[i].answers[k]);
        }
    }
    outf(o, "# TYPE pibl_backend_info gauge\n");
    for (int i = 0; i < s->n_backends; i++) {
        outf(o, "pibl_backend_info{backend=\"");
        out_escaped(o, s->backends[i].name, 1);
        outf(o, "\",address=\"");
        out_escaped(o, s->backends[i].address, 1);
        outf(o, "\",state=\"%s\"} 1\n", state_of(&s->backends[i]));
    }
    outf(o, "# TYPE pibl_cache_enabled gauge\npibl_cache_enabled %d\n"
        "# TYPE pibl_cache_entries gauge\npibl_cache_entries %llu\n"
        "# TYPE pibl_cache_bytes gauge\npibl_cache_bytes %llu\n"
        "# TYPE pibl_cache_hits_total counter\npibl_cache_hits_total %llu\n"
        "# TYPE pibl_cache_lookups_total counter\npibl_cache_lookups_total %llu\n", s->cache_on,
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
    char head[384], date[HTTP_DATE_LEN + 1];
    const char *allow = status != 405 ? "" : len > 0 && strstr(body, "POST") == body ?
        "Allow: POST\r\n" : "Allow: GET, HEAD\r\n";
    http_format_date(time(NULL), date);
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n"
        "Content-Length: %zu\r\n%sCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status, reason, date, type, len, allow);
    if (send_all(fd, head, (size_t)n) == 0 && !is_head)
        send_all(fd, body, len);
}

/* Read one request head into buf. Returns its length, or -1; *got is how
 * many bytes were read in all (the start of a body may follow the head). */
static long
read_request(int fd, char *buf, size_t cap, size_t *got)
{
    size_t len = 0, scan = 0;

    while (len < cap) {
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        len += (size_t)n;
        *got = len;
        long end = http_find_head_end(buf, len, &scan);
        if (end > 0)
            return end;
        if (end == -1)
            return -1;
    }
    return -1;
}

/*
 * The value of key in an application/x-www-form-urlencoded text of len
 * bytes (a query or a form body), decoded into out (cap bytes). Returns 1,
 * or 0 when the key is missing, a value is badly encoded or too long.
 */
static int
form_value(const char *text, size_t len, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key), i = 0;

    while (i < len) {
        size_t end = i;
        while (end < len && text[end] != '&')
            end++;
        if (end - i > kl && memcmp(text + i, key, kl) == 0 && text[i + kl] == '=') {
            size_t n = 0;
            for (size_t j = i + kl + 1; j < end; j++) {
                char c = text[j];
                if (c == '%') {
                    int h = j + 2 < end ? http_hex_value((unsigned char)text[j + 1]) : -1;
                    int l = h >= 0 ? http_hex_value((unsigned char)text[j + 2]) : -1;
                    if (l < 0)
                        return 0;
                    c = (char)(h * 16 + l);
                    j += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (n + 1 >= cap || c == '\0')
                    return 0;
                out[n++] = c;
            }
            out[n] = '\0';
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

/* How many times key= appears in a form text of len bytes. */
static int
form_count(const char *text, size_t len, const char *key)
{
    size_t kl = strlen(key), i = 0;
    int n = 0;

    while (i < len) {
        size_t end = i;
        while (end < len && text[end] != '&')
            end++;
        n += end - i > kl && memcmp(text + i, key, kl) == 0 && text[i + kl] == '=';
        i = end + 1;
    }
    return n;
}

/* 1 when a field value lists want among its comma-separated media types. */
static int
accepts(const struct http_request *req, const char *want)
{
    const struct http_header *h = http_find_field(req->headers, req->n_headers, "accept");

    return h != NULL && memmem(h->value, h->value_len, want, strlen(want)) != NULL;
}

/*
 * A browser's cross-site request (a form on another site posting to the
 * status page): an Origin other than this page's own, or Sec-Fetch-Site
 * other than same-origin or none. Requests from curl carry neither.
 */
static int
cross_site(const struct http_request *req)
{
    const struct http_header *o = http_find_field(req->headers, req->n_headers, "origin");
    const struct http_header *h = http_find_field(req->headers, req->n_headers, "host");
    const struct http_header *f = http_find_field(req->headers, req->n_headers, "sec-fetch-site");

    if (f != NULL && !(f->value_len == 11 && memcmp(f->value, "same-origin", 11) == 0) &&
        !(f->value_len == 4 && memcmp(f->value, "none", 4) == 0))
        return 1;
    if (o == NULL)
        return 0;
    if (h == NULL || o->value_len != 7 + h->value_len || memcmp(o->value, "http://", 7) != 0 ||
        memcmp(o->value + 7, h->value, h->value_len) != 0)
        return 1;
    return 0;
}

/*
 * POST /backend with name=NAME&action=drain|enable|disable|reset, as a form
 * body or a query: change a backend's run-time state. Only clients listed in
 * admin_allow, and never a cross-site browser request. Answers a browser
 * with 303 back to the page, anyone else with a line of text.
 */
static void
admin_action(int fd, const struct http_request *req, const char *head, size_t head_len, size_t got,
    const char *peer_ip)
{
    static const struct { const char *name; int admin; } actions[] = {
        { "drain", RR_ADMIN_DRAIN }, { "enable", RR_ADMIN_READY }, { "ready", RR_ADMIN_READY },
        { "disable", RR_ADMIN_MAINT }, { "maint", RR_ADMIN_MAINT }, { "reset", RR_ADMIN_NONE },
    };
    char body[ADMIN_FORM_MAX], name[MAX_BACKEND_NAME + MAX_HOST_NAME], action[16], msg[1100], who[96];
    size_t body_len = 0;
    const struct http_header *cl = http_find_field(req->headers, req->n_headers, "content-length");
    const char *q = (const char *)memchr(req->target, '?', req->target_len);

    if (!sock_ip_listed(pibl_config_now()->admin_allow, peer_ip)) {
        snprintf(msg, sizeof msg, "forbidden: %s is not in admin_allow (%s)\n", peer_ip,
            pibl_config_now()->admin_allow);
        reply(fd, 403, "Forbidden", "text/plain", msg, strlen(msg), 0);
        return;
    }
    if (cross_site(req)) {
        static const char cs[] = "forbidden: a cross-site request (Origin or Sec-Fetch-Site)\n";
        reply(fd, 403, "Forbidden", "text/plain", cs, sizeof cs - 1, 0);
        return;
    }
    if (http_find_field(req->headers, req->n_headers, "transfer-encoding") != NULL) {
        static const char len[] = "send the form with a Content-Length (no chunked body)\n";
        reply(fd, 411, "Length Required", "text/plain", len, sizeof len - 1, 0);
        return;
    }
    if (cl != NULL) {
        char digits[16];
        size_t n = cl->value_len < sizeof digits - 1 ? cl->value_len : sizeof digits - 1;
        memcpy(digits, cl->value, n);
        digits[n] = '\0';
        char *end;
        long want = strtol(digits, &end, 10);
        if (n == 0 || *end != '\0' || want < 0 || (size_t)want > sizeof body) {
            static const char big[] = "form body missing or over 1 KB\n";
            reply(fd, 413, "Content Too Large", "text/plain", big, sizeof big - 1, 0);
            return;
        }
        body_len = got - head_len < (size_t)want ? got - head_len : (size_t)want;
        memcpy(body, head + head_len, body_len);
        while (body_len < (size_t)want) {
            ssize_t r = recv(fd, body + body_len, (size_t)want - body_len, 0);
            if (r == -1 && errno == EINTR)
                continue;
            if (r <= 0)
                return;
            body_len += (size_t)r;
        }
    }
    int have = form_value(body, body_len, "name", name, sizeof name) ||
        (q != NULL && form_value(q + 1, (size_t)(req->target + req->target_len - q - 1), "name", name,
            sizeof name));
    int have_action = form_value(body, body_len, "action", action, sizeof action) ||
        (q != NULL && form_value(q + 1, (size_t)(req->target + req->target_len - q - 1), "action",
            action, sizeof action));
    size_t ql = q != NULL ? (size_t)(req->target + req->target_len - q - 1) : 0;
    if (form_count(body, body_len, "name") + (q ? form_count(q + 1, ql, "name") : 0) > 1 ||
        form_count(body, body_len, "action") + (q ? form_count(q + 1, ql, "action") : 0) > 1) {
        static const char two[] = "one name and one action per request\n";
        reply(fd, 400, "Bad Request", "text/plain", two, sizeof two - 1, 0);
        return;
    }
    int admin = -1;
    for (size_t i = 0; have_action && i < sizeof actions / sizeof actions[0]; i++)
        if (strcmp(action, actions[i].name) == 0)
            admin = actions[i].admin;
    if (!have || admin == -1) {
        static const char use[] = "expected name=BACKEND and action=drain, enable, disable or reset\n";
        reply(fd, 400, "Bad Request", "text/plain", use, sizeof use - 1, 0);
        return;
    }
    int slot = rr_find(name);
    if (slot == -1) {
        int n = snprintf(msg, sizeof msg, "no backend named \"");
        for (const char *p = name; *p != '\0' && n < 200; p++)
            msg[n++] = (*p >= 0x20 && *p < 0x7f && *p != '"') ? *p : '?';
        snprintf(msg + n, sizeof msg - (size_t)n, "\"\n");
        reply(fd, 404, "Not Found", "text/plain", msg, strlen(msg), 0);
        return;
    }
    snprintf(who, sizeof who, "%s (status page)", peer_ip);
    rr_set_admin(slot, admin, who);
    struct rr_stats st;
    rr_stats(slot, &st);
    snprintf(msg, sizeof msg, "backend %s: %s, now %s\n", st.name, action, g_state_names[st.state]);
    if (accepts(req, "text/html")) {
        char head303[320], date[HTTP_DATE_LEN + 1];
        http_format_date(time(NULL), date);
        int n = snprintf(head303, sizeof head303, "HTTP/1.1 303 See Other\r\nDate: %s\r\n"
            "Location: /\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n", date, strlen(msg));
        if (send_all(fd, head303, (size_t)n) == 0)
            send_all(fd, msg, strlen(msg));
        return;
    }
    reply(fd, 200, "OK", "text/plain", msg, strlen(msg), 0);
}

void
admin_serve(int fd)
{
    struct timeval tv = { ADMIN_TIMEOUT_S, 0 };
    char head[ADMIN_HEAD_MAX], peer_ip[64] = "?";
    struct http_request req;
    struct out o = { NULL, 0, 0 };
    struct snapshot *snap = NULL;
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    size_t got = 0;

    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0)
        sock_addr_text(&peer, peer_ip, sizeof peer_ip);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    long hl = read_request(fd, head, sizeof head, &got);
    if (hl <= 0 || http_parse_request(head, (size_t)hl, 1024, &req) != 0) {
        static const char bad[] = "bad request\n";
        reply(fd, 400, "Bad Request", "text/plain", bad, sizeof bad - 1, 0);
        goto done;
    }
    {
        size_t pl = req.target_len;
        const char *q = (const char *)memchr(req.target, '?', pl);
        if (q != NULL)
            pl = (size_t)(q - req.target);
        int is_head = http_method_is(req.method, req.method_len, "HEAD");
        int is_action = pl == 8 && memcmp(req.target, "/backend", 8) == 0;
        if (is_action && http_method_is(req.method, req.method_len, "POST")) {
            admin_action(fd, &req, head, (size_t)hl, got, peer_ip);
            goto done;
        }
        if (is_action) {
            static const char post[] = "POST only: name=BACKEND&action=drain|enable|disable|reset\n";
            reply(fd, 405, "Method Not Allowed", "text/plain", post, sizeof post - 1, is_head);
            goto done;
        }
        if (!is_head && !http_method_is(req.method, req.method_len, "GET")) {
            static const char only[] = "only GET and HEAD here (actions: POST /backend)\n";
            reply(fd, 405, "Method Not Allowed", "text/plain", only, sizeof only - 1, 0);
            goto done;
        }
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
        } else if (pl == 11 && memcmp(req.target, "/status.csv", 11) == 0) {
            render_csv(snap, &o);
            type = "text/csv; charset=utf-8; header=present";
        } else if (pl == 8 && memcmp(req.target, "/metrics", 8) == 0) {
            render_metrics(snap, &o);
            type = "text/plain; version=0.0.4";
        } else {
            static const char nf[] = "not found: try /, /status.json, /status.csv or /metrics\n";
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
