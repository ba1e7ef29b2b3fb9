/*
 * pibl.h - what every part of PIBL (Proxy Inverso + Balanceador de Carga)
 * shares, exported by pibl.cpp: the configuration (immutable once loaded),
 * the limits of a config file, the process's state (open connections, the
 * graceful stop) and small helpers (clock, threads, whole writes).
 *
 * Each module has a header of its own listing its public functions; a limit
 * a peer can reach is named in the header of the module that enforces it.
 */
#ifndef PIBL_H
#define PIBL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <limits.h>
#include <time.h>

#define PIBL_NAME            "pibl"
#define PIBL_VERSION         "1.0"

/* Limits of a config file. Runtime limits are config keys (struct pibl_config). */
#define MAX_BACKENDS         64       /* backends in a config, and slots over reloads */
#define MAX_WEIGHT           100      /* backend weight=N (0 = drain) */
#define MAX_BACKEND_NAME     64       /* backend NAME, with its NUL */
#define MAX_BACKEND_ADDRS    4        /* addresses kept per backend name */
#define MAX_CONFIG_LINE      1024     /* bytes in one config line */
#define MAX_HOST_NAME        256      /* backend host name */
#define THREAD_STACK_BYTES   (256 * 1024)

/* One "backend = [NAME] host:port [weight=N] [drain]" line, resolved. */
struct backend_conf {
    char name[MAX_HOST_NAME + 8];  /* NAME, or "host:port" when none is given */
    char address[MAX_HOST_NAME + 8];   /* "host:port" as written */
    int weight;                    /* 0..MAX_WEIGHT */
    int drain;                     /* 1: "drain" or weight=0, no new requests */
    int n_addrs;                   /* getaddrinfo answers kept, in its order */
    struct sockaddr_storage addr[MAX_BACKEND_ADDRS];
    socklen_t addr_len[MAX_BACKEND_ADDRS];
};

/*
 * The configuration. Immutable once loaded: a reload (SIGHUP) builds a new
 * one and swaps the pointer, so a request sees one config from start to end.
 */
struct pibl_config {
    char listen_addr[64];          /* address to bind, IPv4 or IPv6 literal */
    int port;                      /* listening port, 0 = any free port */
    int n_backends;                /* backend lines seen */
    struct backend_conf backends[MAX_BACKENDS];
    char log_file[PATH_MAX];       /* exchange log, appended */
    int log_headers;               /* 1: also log whole header blocks */
    int log_format;                /* enum log_format (log.h) of the access lines */
    char error_log[PATH_MAX];      /* PIBL's own lines: "stderr", "stdout" or a
                                      file; "" = the format's default */
    char cache_dir[PATH_MAX];      /* cache folder, relative to the cwd */
    int connect_timeout;           /* s, connect() to a backend */
    int backend_timeout;           /* s, silence from a backend -> 504 */
    int client_timeout;            /* s, whole request head; gap in a body */
    int client_min_rate;           /* bytes/s a request body must average
                                      after its first client_timeout s; 0 = off */
    int keepalive_timeout;         /* s, idle client connection */
    int tunnel_timeout;            /* s without a byte either way in a tunnel */
    int down_time;                 /* s, a failed backend is skipped */
    int max_connections;           /* concurrent client connections */
    int max_header_bytes;          /* request head cap -> 431 */
    int max_uri_bytes;             /* request target cap -> 414 */
    long long max_body_bytes;      /* request body cap -> 413, 0 = none */
    int underscores_in_headers;    /* 1: forward request fields named with
                                      '_' (framing look-alikes never) */
    int upstream_keepalive;        /* 1: pool idle backend connections */
    int shutdown_timeout;          /* s, grace for in-flight exchanges */
    int cache_heuristic;           /* 1: reuse answers without freshness info */
    long long cache_max_bytes;     /* whole cache, LRU eviction past it */
    long long cache_max_object;    /* one entry */
    int cache_stale_if_error;      /* s past expiry served when backends fail */
    int cache_lock_timeout;        /* s a collapsed request waits */
    char purge_allow[512];         /* client IPs allowed to PURGE */
    char admin_allow[512];         /* client IPs allowed to change backends
                                      from the status page */
    char admin_listen[64];         /* status page address */
    int admin_port;                /* status page port; -1 = no status page */
    char health_check[256];        /* path probed by health checks; "" = none */
    int health_interval;           /* s between probes */
    int health_fall;               /* failed probes that take a backend out */
    int health_rise;               /* good probes that put it back */
    long ttl;                      /* cache TTL from the command line */
};

/*
 * Parse the config file at path into cfg (defaults first, then each line).
 * Backends are handed to rr_add() as they are read. Returns 0 on success,
 * -1 with a message "FILE:LINE: what" in err on the first error.
 */
int pibl_config_load(const char *path, struct pibl_config *cfg, char *err, size_t err_len);

/* Set every key of cfg to its documented default (no backends). */
void pibl_config_defaults(struct pibl_config *cfg);

/* The live config (replaced whole by a reload; never freed). */
const struct pibl_config *pibl_config_now(void);

/* Client connections open now, and when PIBL started. */
int pibl_open_connections(void);

/* A client connection was closed (conn.cpp calls it once per accepted one). */
void pibl_conn_closed(void);
time_t pibl_start_time(void);

/* Start a detached helper thread (default stack). Returns 0 or -1. */
int pibl_spawn(void *(*fn)(void *), void *arg);

/* Monotonic clock in microseconds, and in milliseconds. */
int64_t pibl_now_us(void);

static inline int64_t
pibl_now_ms(void)
{
    return pibl_now_us() / 1000;
}

/*
 * The graceful stop: pibl_stop() is called once, on SIGTERM or SIGINT;
 * from then on pibl_stopping() is 1, and connections close as soon as their
 * exchange in flight is done, and no backend connection is pooled.
 */
void pibl_stop(void);
int pibl_stopping(void);

/* While stopping: the time (ms, pibl_now_ms) when connections still open
 * are cut (shutdown_timeout after the stop began). 0 before a stop. */
int64_t pibl_stop_cut(void);

/* Write all of buf to a file or pipe, retrying EINTR and short writes.
 * Returns 0, or -1 with errno set. (Sockets use sock_writev_all.) */
int pibl_write_all(int fd, const char *buf, size_t len);

#endif
