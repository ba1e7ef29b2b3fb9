/*
 * pibl.cpp - PIBL's entry point: the command line, the config file into an
 * immutable config (and its reload on SIGHUP), the listening sockets, the
 * main select() loop, signals and the graceful stop.
 *
 * Shape: one thread runs select() over the listening sockets and a wake
 * pipe (signals are turned into bytes on that pipe), accepts, and hands each
 * client to the event loops (loop_accept, loop.cpp); a status page client
 * gets a detached thread with a small stack (admin.cpp). Only descriptors
 * opened at start-up enter this fd_set.
 *
 * It does not touch HTTP bytes. Only start-up code exits; once serving,
 * errors cost a connection, never the process.
 * Limits: max_connections client connections (past it: a quick 503),
 * MAX_ADMIN_CONNS status page clients, the RLIMIT_NOFILE hard limit,
 * MAX_CONFIG_LINE bytes per config line.
 */
#include "pibl.h"
#include "admin.h"
#include "cache.h"
#include "conn.h"
#include "health.h"
#include "log.h"
#include "loop.h"
#include "rr.h"
#include "sock.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <atomic>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ACCEPT_BACKOFF_MS  100     /* pause on EMFILE/ENFILE instead of spinning */
#define MAX_FDS            (1 << 20)

/* ---------------------------------------------------------------- config */

enum key_type { K_INT, K_LONG, K_BOOL, K_STRING, K_BACKEND, K_ADDR, K_ACL, K_PATH, K_LOG_FORMAT };

struct key_spec {
    const char *name;
    enum key_type type;
    size_t offset;                 /* into struct pibl_config */
    long long min, max;            /* numbers; strings: max = buffer size */
};

#define CFG(field) offsetof(struct pibl_config, field)

static const struct key_spec g_keys[] = {
    { "listen",             K_ADDR,    CFG(listen_addr),        0, 64 },
    { "port",               K_INT,     CFG(port),               0, 65535 },
    { "backend",            K_BACKEND, 0,                       0, 0 },
    { "log_file",           K_STRING,  CFG(log_file),           0, PATH_MAX },
    { "log_headers",        K_BOOL,    CFG(log_headers),        0, 1 },
    { "log_format",         K_LOG_FORMAT, CFG(log_format),      0, 0 },
    { "error_log",          K_STRING,  CFG(error_log),          0, PATH_MAX },
    { "cache_dir",          K_STRING,  CFG(cache_dir),          0, PATH_MAX - 64 },
    { "connect_timeout",    K_INT,     CFG(connect_timeout),    1, 3600 },
    { "backend_timeout",    K_INT,     CFG(backend_timeout),    1, 86400 },
    { "client_timeout",     K_INT,     CFG(client_timeout),     1, 3600 },
    { "client_min_rate",    K_INT,     CFG(client_min_rate),    0, 1 << 30 },
    { "keepalive_timeout",  K_INT,     CFG(keepalive_timeout),  1, 3600 },
    { "tunnel_timeout",     K_INT,     CFG(tunnel_timeout),     1, 604800 },
    { "down_time",          K_INT,     CFG(down_time),          0, 86400 },
    { "max_connections",    K_INT,     CFG(max_connections),    1, 1000000 },
    { "max_header_bytes",   K_INT,     CFG(max_header_bytes),   1024, 1048576 },
    { "max_uri_bytes",      K_INT,     CFG(max_uri_bytes),      16, 1048576 },
    { "max_body_bytes",     K_LONG,    CFG(max_body_bytes),     0, (1LL << 62) },
    { "underscores_in_headers", K_BOOL, CFG(underscores_in_headers), 0, 1 },   /* nginx's name */
    { "upstream_keepalive", K_BOOL,    CFG(upstream_keepalive), 0, 1 },
    { "shutdown_timeout",   K_INT,     CFG(shutdown_timeout),   0, 3600 },
    { "cache_heuristic",    K_BOOL,    CFG(cache_heuristic),    0, 1 },
    { "cache_max_bytes",    K_LONG,    CFG(cache_max_bytes),    0, (1LL << 62) },
    { "cache_max_object",   K_LONG,    CFG(cache_max_object),   0, (1LL << 62) },
    { "cache_stale_if_error", K_INT,   CFG(cache_stale_if_error), 0, 31536000 },
    { "cache_lock_timeout", K_INT,     CFG(cache_lock_timeout), 0, 3600 },
    { "purge_allow",        K_ACL,     CFG(purge_allow),        0, 512 },
    { "admin_allow",        K_ACL,     CFG(admin_allow),        0, 512 },
    { "admin_listen",       K_ADDR,    CFG(admin_listen),       0, 64 },
    { "admin_port",         K_INT,     CFG(admin_port),         0, 65535 },
    { "health_check",       K_PATH,    CFG(health_check),       0, 256 },
    { "health_interval",    K_INT,     CFG(health_interval),    1, 3600 },
    { "health_fall",        K_INT,     CFG(health_fall),        1, 100 },
    { "health_rise",        K_INT,     CFG(health_rise),        1, 100 },
};

void
pibl_config_defaults(struct pibl_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen_addr, sizeof cfg->listen_addr, "0.0.0.0");
    cfg->port = 8080;
    snprintf(cfg->log_file, sizeof cfg->log_file, "pibl.log");
    snprintf(cfg->cache_dir, sizeof cfg->cache_dir, "cache");
    cfg->connect_timeout = 3;
    cfg->backend_timeout = 30;
    cfg->client_timeout = 10;
    cfg->client_min_rate = 500;
    cfg->keepalive_timeout = 15;
    cfg->tunnel_timeout = 3600;
    cfg->down_time = 5;
    cfg->max_connections = 10000;
    cfg->max_header_bytes = 16384;
    cfg->max_uri_bytes = 8192;
    cfg->max_body_bytes = 1LL << 30;
    cfg->upstream_keepalive = 1;
    cfg->shutdown_timeout = 10;
    cfg->cache_heuristic = 1;
    cfg->cache_max_bytes = 1LL << 30;
    cfg->cache_max_object = 256LL << 20;
    cfg->cache_stale_if_error = 300;
    cfg->cache_lock_timeout = 5;
    snprintf(cfg->purge_allow, sizeof cfg->purge_allow, "127.0.0.1 ::1");
    snprintf(cfg->admin_allow, sizeof cfg->admin_allow, "127.0.0.1 ::1");
    snprintf(cfg->admin_listen, sizeof cfg->admin_listen, "127.0.0.1");
    cfg->admin_port = -1;
    cfg->health_interval = 2;
    cfg->health_fall = 3;
    cfg->health_rise = 2;
}

static int parse_number(const char *s, long long min, long long max, long long *out);

/* A backend NAME: 1 to MAX_BACKEND_NAME - 1 letters, digits, '.', '_', '-',
 * starting with a letter or digit (no ':', so that it cannot be taken for an
 * address), and not an option word ("drain"). */
static int
valid_backend_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= MAX_BACKEND_NAME || strcmp(s, "drain") == 0)
        return 0;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* Next blank-separated word of *p, cut in place; NULL at the end. */
static char *
next_word(char **p)
{
    char *s = *p;

    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return NULL;
    char *w = s;
    while (*s != '\0' && *s != ' ' && *s != '\t')
        s++;
    if (*s != '\0')
        *s++ = '\0';
    *p = s;
    return w;
}

/*
 * "[NAME] host:port [weight=N] [drain]": resolve the backend into the next
 * slot of cfg. The first word is the address when it holds a ':' (every
 * address does, a name never). Returns 0, or -1 with the reason in err.
 */
static int
add_backend(struct pibl_config *cfg, char *value, char *err, size_t err_len)
{
    char *rest = value, *name = NULL, *w;
    long long weight = 1;
    int drain = 0, weighted = 0;

    char *spec = next_word(&rest);
    if (spec != NULL && strchr(spec, ':') == NULL) {
        name = spec;
        if (!valid_backend_name(name)) {
            snprintf(err, err_len, "backend name \"%.40s\": use 1 to %d letters, digits, '.', '_' "
                "or '-', starting with a letter or digit (and not \"drain\")", name,
                MAX_BACKEND_NAME - 1);
            return -1;
        }
        spec = next_word(&rest);
        if (spec == NULL) {
            snprintf(err, err_len, "backend %s: expected host:port after the name", name);
            return -1;
        }
    }
    if (strchr(spec, ':') == NULL) {
        snprintf(err, err_len, "backend %s: expected host:port after the name, got \"%.40s\"", name, spec);
        return -1;
    }
    while ((w = next_word(&rest)) != NULL) {
        if ((strncmp(w, "weight=", 7) == 0 && weighted) || (strcmp(w, "drain") == 0 && drain)) {
            snprintf(err, err_len, "backend \"%s\": \"%.10s\" given twice", spec,
                drain && w[0] == 'd' ? "drain" : "weight");
            return -1;
        }
        if (strncmp(w, "weight=", 7) == 0 && parse_number(w + 7, 0, MAX_WEIGHT, &weight) == 0) {
            weighted = 1;
        } else if (strcmp(w, "drain") == 0) {
            drain = 1;
        } else {
            snprintf(err, err_len, "backend \"%s\": expected \"weight=N\" (N from 0 to %d) or "
                "\"drain\" after the address, got \"%.40s\"", spec, MAX_WEIGHT, w);
            return -1;
        }
    }
    if (cfg->n_backends >= MAX_BACKENDS) {
        snprintf(err, err_len, "too many backends (at most %d)", MAX_BACKENDS);
        return -1;
    }
    struct backend_conf *bc = &cfg->backends[cfg->n_backends];
    if (rr_resolve(spec, (int)weight, bc, err, err_len) == -1)
        return -1;
    if (name != NULL)
        snprintf(bc->name, sizeof bc->name, "%s", name);
    bc->drain = drain || weight == 0;
    for (int i = 0; i < cfg->n_backends; i++) {
        if (strcmp(cfg->backends[i].name, bc->name) == 0) {
            snprintf(err, err_len, "backend %s listed twice (give each line its own NAME: "
                "\"backend = NAME host:port\")", bc->name);
            return -1;
        }
    }
    cfg->n_backends++;
    return 0;
}

/* Cut leading and trailing blanks in place; returns the new start. */
static char *
trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        e--;
    *e = '\0';
    return s;
}

/* Parse a whole decimal number in [min, max]. Returns 0 or -1. */
static int
parse_number(const char *s, long long min, long long max, long long *out)
{
    char *end;

    if (*s == '\0' || (*s != '-' && (*s < '0' || *s > '9')))
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int
parse_bool(const char *s)
{
    if (strcmp(s, "on") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
        return 1;
    if (strcmp(s, "off") == 0 || strcmp(s, "no") == 0 || strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
        return 0;
    return -1;
}

/* Apply one "key = value"; returns 0 or -1 with the reason in err. */
static int
apply_key(struct pibl_config *cfg, const struct key_spec *k, char *value, char *err, size_t err_len)
{
    char *field = (char *)cfg + k->offset;
    long long v;
    int b;

    switch (k->type) {
    case K_INT:
    case K_LONG:
        if (parse_number(value, k->min, k->max, &v) == -1) {
            snprintf(err, err_len, "%s: \"%s\" is not a whole number from %lld to %lld", k->name,
                value, k->min, k->max);
            return -1;
        }
        if (k->type == K_INT)
            *(int *)field = (int)v;
        else
            *(long long *)field = v;
        return 0;
    case K_BOOL:
        if ((b = parse_bool(value)) == -1) {
            snprintf(err, err_len, "%s: \"%s\" must be on or off", k->name, value);
            return -1;
        }
        *(int *)field = b;
        return 0;
    case K_ADDR:
    case K_ACL:
    case K_STRING: {
        unsigned char tmp[16];
        char why[160];
        if (k->type == K_ADDR && inet_pton(AF_INET, value, tmp) != 1 &&
            inet_pton(AF_INET6, value, tmp) != 1) {
            snprintf(err, err_len, "%s: \"%s\" is not an IPv4 or IPv6 address", k->name, value);
            return -1;
        }
        if (k->type == K_ACL && sock_acl_check(value, why, sizeof why) == -1) {
            snprintf(err, err_len, "%s: %s", k->name, why);
            return -1;
        }
        if (strlen(value) >= (size_t)k->max) {
            snprintf(err, err_len, "%s: value too long", k->name);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    }
    case K_BACKEND:
        return add_backend(cfg, value, err, err_len);
    case K_LOG_FORMAT:
        if ((b = log_format_parse(value)) == -1) {
            snprintf(err, err_len, "%s: \"%s\" must be pibl, combined or json", k->name, value);
            return -1;
        }
        *(int *)field = b;
        return 0;
    case K_PATH:
        if (value[0] != '/' || strpbrk(value, " \t") != NULL) {
            snprintf(err, err_len, "%s: \"%s\" must be a path starting with /, without blanks", k->name,
                value);
            return -1;
        }
        if (strlen(value) >= (size_t)k->max) {
            snprintf(err, err_len, "%s: value too long", k->name);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    }
    return -1;
}

/* 1 when binding both addresses to one port would clash: one family and
 * the same address or a wildcard, or across families the IPv6 wildcard
 * "::", which takes IPv4 too (Linux's default, bindv6only = 0). */
static int
same_bind(const char *a, const char *b)
{
    unsigned char x[16], y[16], any[16] = { 0 };
    int fa = strchr(a, ':') ? AF_INET6 : AF_INET, fb = strchr(b, ':') ? AF_INET6 : AF_INET;

    if (inet_pton(fa, a, x) != 1 || inet_pton(fb, b, y) != 1)
        return strcmp(a, b) == 0;
    size_t la = fa == AF_INET6 ? 16 : 4, lb = fb == AF_INET6 ? 16 : 4;
    int any_a = memcmp(x, any, la) == 0, any_b = memcmp(y, any, lb) == 0;
    if (fa == fb)
        return any_a || any_b || memcmp(x, y, la) == 0;
    return fa == AF_INET6 ? any_a : any_b;
}

int
pibl_config_load(const char *path, struct pibl_config *cfg, char *err, size_t err_len)
{
    char *line = NULL, why[512];
    size_t line_cap = 0;
    ssize_t got;
    unsigned char seen[sizeof g_keys / sizeof g_keys[0]] = { 0 };
    int lineno = 0, rc = -1;
    FILE *f = fopen(path, "r");

    pibl_config_defaults(cfg);
    if (f == NULL) {
        snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    while ((got = getline(&line, &line_cap, f)) != -1) {
        lineno++;
        size_t len = (size_t)got;               /* what was read, NUL bytes too */
        if (memchr(line, '\0', len) != NULL) {
            snprintf(err, err_len, "%s:%d: NUL byte in line", path, lineno);
            goto done;
        }
        if (len > 0 && line[len - 1] == '\n')
            len--;
        if (len > 0 && line[len - 1] == '\r')
            len--;                              /* the line ending is not part of the line */
        if (len > MAX_CONFIG_LINE) {
            snprintf(err, err_len, "%s:%d: line longer than %d bytes", path, lineno, MAX_CONFIG_LINE);
            goto done;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *s = trim(line);
        if (*s == '\0')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, err_len, "%s:%d: expected \"key = value\", got \"%.60s\"", path, lineno, s);
            goto done;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        if (*value == '\0') {
            snprintf(err, err_len, "%s:%d: %s: missing value", path, lineno, key);
            goto done;
        }
        size_t i;
        for (i = 0; i < sizeof g_keys / sizeof g_keys[0]; i++)
            if (strcmp(key, g_keys[i].name) == 0)
                break;
        if (i == sizeof g_keys / sizeof g_keys[0]) {
            snprintf(err, err_len, "%s:%d: unknown key \"%.60s\"", path, lineno, key);
            goto done;
        }
        if (seen[i] && g_keys[i].type != K_BACKEND) {
            snprintf(err, err_len, "%s:%d: %s set twice", path, lineno, key);
            goto done;
        }
        seen[i] = 1;
        if (apply_key(cfg, &g_keys[i], value, why, sizeof why) == -1) {
            snprintf(err, err_len, "%s:%d: %s", path, lineno, why);
            goto done;
        }
    }
    if (ferror(f)) {
        snprintf(err, err_len, "%s: read error: %s", path, strerror(errno));
        goto done;
    }
    if (cfg->n_backends == 0) {
        snprintf(err, err_len, "%s: no backend line (at least one \"backend = host:port\")", path);
        goto done;
    }
    if (cfg->admin_port > 0 && cfg->admin_port == cfg->port && same_bind(cfg->listen_addr,
        cfg->admin_listen)) {
        snprintf(err, err_len, "%s: admin_port %d is also port: the status page (admin_listen %s) "
            "and the proxy (listen %s) cannot listen on the same port", path, cfg->port,
            cfg->admin_listen, cfg->listen_addr);
        goto done;
    }
    rc = 0;
done:
    free(line);
    fclose(f);
    return rc;
}

/* ---------------------------------------------------------------- serving */

/* The live config. Swapped whole on reload; old ones are never freed, since
 * a request that started under one may still be reading it. */
static std::atomic<const struct pibl_config *> g_cfg_now;
static std::atomic<int> g_n_active;        /* client connections being served */
static time_t g_started;                   /* for the uptime */

const struct pibl_config *
pibl_config_now(void)
{
    return g_cfg_now.load(std::memory_order_acquire);
}

int
pibl_open_connections(void)
{
    return g_n_active.load();
}

void
pibl_conn_closed(void)
{
    g_n_active.fetch_sub(1);
}

time_t
pibl_start_time(void)
{
    return g_started;
}

int64_t
pibl_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static std::atomic<int> g_stopping;        /* a graceful stop is in progress */
static std::atomic<int64_t> g_stop_cut;    /* ms: what is still open then is cut */

void
pibl_stop(void)
{
    g_stop_cut.store(pibl_now_ms() + (int64_t)pibl_config_now()->shutdown_timeout * 1000);
    g_stopping.store(1);
}

int64_t
pibl_stop_cut(void)
{
    return g_stop_cut.load();
}

int
pibl_stopping(void)
{
    return g_stopping.load();
}

int
pibl_spawn(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t t;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

int
pibl_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

#ifndef PIBL_NO_MAIN   /* unit tests link the config parser alone */


static const char *g_config_path;          /* for reloads */
static int g_wake[2] = { -1, -1 };         /* signal -> select() */
static sigset_t g_select_mask;             /* signal mask while in pselect() */
static std::atomic<int> g_n_admin;         /* status page connections */
static pthread_attr_t g_thread_attr;

static void
on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(g_wake[1], &b, 1);
    (void)n;
    errno = saved;
}

/*
 * Route signals to the select() loop: handlers write the signal number to a
 * pipe; SIGINT, SIGTERM, SIGHUP and SIGUSR1 are blocked from here on (so in
 * every thread started later) and unblocked only inside pselect().
 */
static int
install_signals(void)
{
    struct sigaction sa;
    sigset_t handled;

    if (pipe2(g_wake, O_CLOEXEC | O_NONBLOCK) == -1)
        return -1;
    sigemptyset(&handled);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGHUP);
    sigaddset(&handled, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &handled, &g_select_mask) != 0)
        return -1;
    sigdelset(&g_select_mask, SIGINT);
    sigdelset(&g_select_mask, SIGTERM);
    sigdelset(&g_select_mask, SIGHUP);
    sigdelset(&g_select_mask, SIGUSR1);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    return 0;
}

/* Raise the soft descriptor limit to the hard one; returns the limit. */
static int
raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur > MAX_FDS ? MAX_FDS : (int)rl.rlim_cur;
}

/* Bind and listen on addr:port; writes "addr:port" into bound. Returns the fd or -1. */
static int
open_listener(const char *addr, int port, char *bound, size_t bound_len)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1, fd;

    memset(&ss, 0, sizeof ss);
    if (strchr(addr, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, addr, &s6->sin6_addr);
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, addr, &s4->sin_addr);
        len = sizeof *s4;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) == -1 || listen(fd, 4096) == -1 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) == -1) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (fd >= FD_SETSIZE) {                    /* never FD_SET such an fd */
        close(fd);
        errno = EMFILE;
        return -1;
    }
    int bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port :
        ((struct sockaddr_in *)&ss)->sin_port);
    snprintf(bound, bound_len, strchr(addr, ':') ? "[%s]:%d" : "%s:%d", addr, bound_port);
    return fd;
}

/* A status page connection: a thread of its own. */
static void *
admin_main(void *arg)
{
    int fd = (int)(intptr_t)arg;

    admin_serve(fd);
    g_n_admin.fetch_sub(1);
    return NULL;
}

/* Hand a new client to an event loop (or a status page client to a
 * thread), or turn it away with a 503. */
static void
start_connection(int fd, const struct sockaddr_storage *peer, int admin)
{
    int one = 1;
    std::atomic<int> *count = admin ? &g_n_admin : &g_n_active;
    int limit = admin ? MAX_ADMIN_CONNS : pibl_config_now()->max_connections;

    if (count->load() >= limit) {
        loop_reject(fd, 503, "too many connections");
        log_line("pibl: warning: %s (%d) reached, a client got 503",
            admin ? "status page connection limit" : "max_connections", limit);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    count->fetch_add(1);
    if (!admin) {
        if (loop_accept(fd, peer) == -1) {
            count->fetch_sub(1);
            loop_reject(fd, 503, "out of memory");
        }
        return;
    }
    pthread_t t;
    int rc = pthread_create(&t, &g_thread_attr, admin_main, (void *)(intptr_t)fd);
    if (rc != 0) {
        count->fetch_sub(1);
        loop_reject(fd, 503, "cannot start a thread");
        log_line("pibl: warning: cannot start a connection thread: %s", strerror(rc));
    }
}

/*
 * Accept every pending connection. Returns 0, or -1 when descriptors ran
 * out: the caller then leaves the listener alone for a moment (the pending
 * clients wait in the backlog) instead of spinning on EMFILE.
 */
static int
accept_all(int lfd, int admin)
{
    static time_t last_warning;

    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                if (time(NULL) != last_warning)
                    log_line("pibl: warning: accept: %s; pausing accepts", strerror(errno));
                last_warning = time(NULL);
                return -1;
            }
            return 0;                           /* EAGAIN and the rest */
        }
        start_connection(fd, &peer, admin);
    }
}

/*
 * SIGHUP: read the config file again. A config with any error is refused
 * with a log line and the running one stays. What cannot change without a
 * restart (listening addresses, the cache folder) keeps its old value, with
 * a warning. Open connections are not touched: requests already started
 * finish under the config they started with.
 */
static void
reload(void)
{
    const struct pibl_config *cur = pibl_config_now();
    struct pibl_config *next = (struct pibl_config *)malloc(sizeof *next);
    char err[1024];
    struct rr_changes ch;

    if (next == NULL)
        return;
    if (pibl_config_load(g_config_path, next, err, sizeof err) == -1) {
        log_line("pibl: reload refused: %s (the running config stays)", err);
        free(next);
        return;
    }
    next->ttl = cur->ttl;
    if (strcmp(next->listen_addr, cur->listen_addr) != 0 || next->port != cur->port ||
        strcmp(next->admin_listen, cur->admin_listen) != 0 || next->admin_port != cur->admin_port ||
        strcmp(next->cache_dir, cur->cache_dir) != 0)
        log_line("pibl: warning: reload: listen, port, admin_listen, admin_port and cache_dir "
            "change only on restart; kept as they were");
    if (next->log_format != cur->log_format || strcmp(next->error_log, cur->error_log) != 0)
        log_line("pibl: warning: reload: log_format and error_log change only on restart; "
            "kept as they were");
    next->log_format = cur->log_format;
    memcpy(next->error_log, cur->error_log, sizeof next->error_log);
    memcpy(next->listen_addr, cur->listen_addr, sizeof next->listen_addr);
    next->port = cur->port;
    memcpy(next->admin_listen, cur->admin_listen, sizeof next->admin_listen);
    next->admin_port = cur->admin_port;
    memcpy(next->cache_dir, cur->cache_dir, sizeof next->cache_dir);
    if (rr_configure(next, &ch) == -1) {
        log_line("pibl: reload refused: no free backend slot (at most %d)", MAX_BACKENDS);
        free(next);
        return;
    }
    g_cfg_now.store(next, std::memory_order_release);
    cache_set_limits(next);
    for (int i = 0; i < ch.n_removed_slots; i++)
        upstream_pool_flush(ch.removed_slots[i]);
    if (strcmp(next->log_file, cur->log_file) != 0)
        log_reopen(next->log_file);
    log_line("pibl: reloaded %s: %d backend%s (%d added, %d removed, %d changed)", g_config_path,
        next->n_backends, next->n_backends == 1 ? "" : "s", ch.added, ch.removed, ch.changed);
    if (ch.added + ch.removed + ch.changed > 0)
        log_line("pibl: reload: added: %s; removed: %s; changed: %s", ch.added ? ch.names[0] : "-",
            ch.removed ? ch.names[1] : "-", ch.changed ? ch.names[2] : "-");
}

/* Stop accepting, let in-flight exchanges finish (bounded), then exit. */
static void
shut_down(int lfd, int afd, int sig)
{
    close(lfd);
    if (afd != -1)
        close(afd);
    log_line("pibl: signal %d: stopping, %d connection(s) open", sig, g_n_active.load());
    pibl_stop();
    for (;;) {
        conn_stop_idle();
        if (g_n_active.load() == 0)
            break;
        if (pibl_now_ms() >= pibl_stop_cut()) {
            log_line("pibl: shutdown_timeout reached, %d connection(s) cut", g_n_active.load());
            break;
        }
        usleep(20000);
    }
    log_line("pibl: stopped");
    log_close();
    _exit(0);
}

/* The select() loop: listeners and the signal pipe; fds opened at start-up only. */
static void
serve(int lfd, int afd)
{
    int maxfd = lfd > g_wake[0] ? lfd : g_wake[0];
    struct timespec paused_until = { 0, 0 };

    if (afd > maxfd)
        maxfd = afd;
    for (;;) {
        fd_set rfds;
        struct timeval tv = { 1, 0 };
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        int paused = now.tv_sec < paused_until.tv_sec ||
            (now.tv_sec == paused_until.tv_sec && now.tv_nsec < paused_until.tv_nsec);
        FD_ZERO(&rfds);
        FD_SET(g_wake[0], &rfds);
        if (afd != -1)
            FD_SET(afd, &rfds);
        if (!paused)
            FD_SET(lfd, &rfds);
        else
            tv = { 0, ACCEPT_BACKOFF_MS * 1000 };
        /* The handled signals are blocked in every thread and let in only
         * here, so no worker's recv() or connect() is ever interrupted. */
        struct timespec ts = { tv.tv_sec, tv.tv_usec * 1000 };
        int n = pselect(maxfd + 1, &rfds, NULL, NULL, &ts, &g_select_mask);
        admin_tick();
        if (n == -1) {
            if (errno != EINTR)
                log_line("pibl: select: %s", strerror(errno));
            continue;
        }
        if (FD_ISSET(g_wake[0], &rfds)) {
            unsigned char sigs[16];
            ssize_t got = read(g_wake[0], sigs, sizeof sigs);
            for (ssize_t i = 0; i < got; i++) {
                if (sigs[i] == SIGINT || sigs[i] == SIGTERM)
                    shut_down(lfd, afd, sigs[i]);
                else if (sigs[i] == SIGHUP)
                    reload();
                else if (sigs[i] == SIGUSR1)
                    log_reopen(pibl_config_now()->log_file);
            }
        }
        if (afd != -1 && FD_ISSET(afd, &rfds))
            accept_all(afd, 1);
        if (!paused && FD_ISSET(lfd, &rfds) && accept_all(lfd, 0) == -1) {
            clock_gettime(CLOCK_MONOTONIC, &paused_until);
            paused_until.tv_nsec += ACCEPT_BACKOFF_MS * 1000000L;
            if (paused_until.tv_nsec >= 1000000000L) {
                paused_until.tv_sec++;
                paused_until.tv_nsec -= 1000000000L;
            }
        }
    }
}

/*
 * Whether the log file can be opened for appending. make: it is made if
 * missing, as log_open() does; else one that is missing is made and removed
 * again (pibl -t leaves nothing behind). Returns 0, or -1 with the reason.
 */
static int
check_log_file(const char *path, int make, char *why, size_t why_len)
{
    struct stat st;
    int made = !make && stat(path, &st) == -1 && errno == ENOENT;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

    if (fd == -1) {
        snprintf(why, why_len, "log_file %s: cannot open for writing: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    if (made)
        unlink(path);
    return 0;
}

/* 1 when the two paths name one file (the same path, or the same inode). */
static int
same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    if (strcmp(a, b) == 0)
        return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/*
 * What is wrong with the command line, as a sentence naming the argument, or
 * NULL when it is one of: -h, -V, -t CONFIG, CONFIG TTL (TTL checked later).
 */
static const char *
cli_check(int argc, char **argv)
{
    static char why[160];
    const char *a = argc > 1 ? argv[1] : "";

    if (argc == 1)
        return "expected CONFIG and TTL";
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "-V") == 0 ||
        strcmp(a, "--version") == 0) {
        if (argc == 2)
            return NULL;
        snprintf(why, sizeof why, "%s takes no arguments", a);
        return why;
    }
    if (strcmp(a, "-t") == 0) {
        if (argc == 3)
            return NULL;
        return argc == 2 ? "-t needs the config file to check: pibl -t CONFIG"
                         : "-t takes one config file";
    }
    if (a[0] == '-' && a[1] != '\0') {
        snprintf(why, sizeof why, "unknown option \"%.64s\"", a);
        return why;
    }
    if (argc == 2)
        return "missing TTL after CONFIG (cache lifetime in seconds, 0 = no cache)";
    if (argc > 3) {
        snprintf(why, sizeof why, "unexpected argument \"%.64s\" after CONFIG and TTL", argv[3]);
        return why;
    }
    return NULL;
}

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: pibl CONFIG TTL    run the proxy; TTL = cache lifetime in seconds (0 = no cache)\n"
        "       pibl -t CONFIG     check the config file and exit\n"
        "       pibl -V, --version print the version and exit\n"
        "       pibl -h, --help    this help\n"
        "signals: SIGHUP reloads CONFIG, SIGUSR1 reopens the log file, SIGTERM stops\n"
        "example: ./pibl pibl.cfg 60\n");
}

int
main(int argc, char **argv)
{
    static struct pibl_config cfg;
    char err[1024], bound[96], admin_bound[96];
    struct rr_changes ch;
    long long ttl;

    const char *bad = cli_check(argc, argv);
    if (bad != NULL) {
        fprintf(stderr, "pibl: %s\n", bad);
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("pibl %s\n", PIBL_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "-t") == 0) {
        if (pibl_config_load(argv[2], &cfg, err, sizeof err) == -1) {
            fprintf(stderr, "pibl: %s\n", err);
            return 2;
        }
        /* What start-up would run into, found before it does. */
        int bad_files = 0;
        if (cache_check_folder(cfg.cache_dir, 0, err, sizeof err) == -1) {
            fprintf(stderr, "pibl: %s: cache_dir %s: %s (the cache would be off)\n", argv[2],
                cfg.cache_dir, err);
            bad_files++;
        }
        if (check_log_file(cfg.log_file, 0, err, sizeof err) == -1) {
            fprintf(stderr, "pibl: %s: %s (logging would go to stdout only)\n", argv[2], err);
            bad_files++;
        }
        int own_file = cfg.error_log[0] != '\0' && strcmp(cfg.error_log, "stderr") != 0 &&
            strcmp(cfg.error_log, "stdout") != 0;
        if (own_file && check_log_file(cfg.error_log, 0, err, sizeof err) == -1) {
            fprintf(stderr, "pibl: %s: error_log: %s (PIBL's own lines would go to stderr)\n",
                argv[2], err + strlen("log_file "));
            bad_files++;
        }
        if (own_file && cfg.log_format != LOG_FORMAT_PIBL && same_file(cfg.error_log, cfg.log_file)) {
            fprintf(stderr, "pibl: %s: error_log %s is also log_file: PIBL's own lines would be "
                "mixed with the access lines (leave error_log out for that)\n", argv[2],
                cfg.error_log);
            bad_files++;
        }
        if (bad_files) {
            fprintf(stderr, "pibl: %s: the syntax is OK, but %d problem%s above\n", argv[2], bad_files,
                bad_files == 1 ? "" : "s");
            return 1;
        }
        printf("pibl: %s: OK\n", argv[2]);
        return 0;
    }
    if (parse_number(argv[2], 0, 31536000, &ttl) == -1) {
        fprintf(stderr, "pibl: TTL \"%s\": expected whole seconds from 0 to 31536000\n", argv[2]);
        return 2;
    }
    if (pibl_config_load(argv[1], &cfg, err, sizeof err) == -1) {
        fprintf(stderr, "pibl: %s\n", err);
        return 2;
    }
    g_config_path = argv[1];
    cfg.ttl = (long)ttl;
    g_started = time(NULL);
    g_cfg_now.store(&cfg);
    rr_configure(&cfg, &ch);

    int n_fds = raise_fd_limit();
    const char *error_log = cfg.error_log;
    if (cfg.log_format != LOG_FORMAT_PIBL && cfg.error_log[0] != '\0' &&
        strcmp(cfg.error_log, "stderr") != 0 && strcmp(cfg.error_log, "stdout") != 0 &&
        same_file(cfg.error_log, cfg.log_file)) {
        /* log_file keeps exchange lines only, as its format promises. */
        fprintf(stderr, "pibl: warning: error_log %s is also log_file: PIBL's own lines go to stderr "
            "instead\n", cfg.error_log);
        error_log = "stderr";
    }
    if (install_signals() == -1 || log_open(cfg.log_file, cfg.log_format, error_log) == -1) {
        fprintf(stderr, "pibl: cannot start: %s\n", strerror(errno));
        return 1;
    }
    upstream_init();
    if (conn_init(n_fds) == -1 || loop_init() == -1) {
        fprintf(stderr, "pibl: cannot start the event loops: %s\n", strerror(errno));
        return 1;
    }
    pthread_attr_init(&g_thread_attr);
    pthread_attr_setdetachstate(&g_thread_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&g_thread_attr, THREAD_STACK_BYTES);

    int lfd = open_listener(cfg.listen_addr, cfg.port, bound, sizeof bound);
    if (lfd == -1) {
        fprintf(stderr, "pibl: cannot listen on %s port %d: %s\n", cfg.listen_addr, cfg.port,
            strerror(errno));
        log_close();
        return 1;
    }
    if (g_wake[0] >= FD_SETSIZE) {
        fprintf(stderr, "pibl: signal pipe above FD_SETSIZE\n");
        return 1;
    }
    health_start();
    log_line("pibl: listening on %s, %d backend%s", bound, rr_count(), rr_count() == 1 ? "" : "s");
    int afd = -1;
    if (cfg.admin_port >= 0) {
        /* The status page is an extra: without it PIBL still proxies. */
        afd = open_listener(cfg.admin_listen, cfg.admin_port, admin_bound, sizeof admin_bound);
        if (afd == -1)
            log_line("pibl: warning: no status page: cannot listen on %s port %d: %s",
                cfg.admin_listen, cfg.admin_port, strerror(errno));
        else
            log_line("pibl: status page on http://%s/ (JSON /status.json, Prometheus /metrics)",
                admin_bound);
    }
    /* After the "listening" line, which scripts wait for as the first one;
     * clients queue in the backlog until serve() runs. */
    if (cache_init(&cfg) == -1)
        log_line("pibl: warning: cache %s; cache off", cache_off_reason());
    char log_why[PATH_MAX + 64];
    int log_ok = check_log_file(cfg.log_file, 1, log_why, sizeof log_why) == 0;
    if (cache_enabled())
        log_line("pibl: cache on (TTL %ld s, folder %s), log file %s%s%s", cfg.ttl, cfg.cache_dir,
            log_ok ? cfg.log_file : "off: ", log_ok ? "" : log_why, log_ok ? "" : ", stdout only");
    else
        log_line("pibl: cache off (%s), log file %s%s%s", cache_off_reason(),
            log_ok ? cfg.log_file : "off: ", log_ok ? "" : log_why, log_ok ? "" : ", stdout only");
    serve(lfd, afd);
    return 0;
}
#endif
