/*
 * exchange.h - one request/answer exchange with blocking I/O (exchange.cpp):
 * read and check the request, build the head for the backend, send it with
 * its body, read the answer, retry over backends where that is safe, relay
 * the answer, answer errors, write the log line. The blocking threads run
 * whole exchanges with it; the event loops (ev.cpp) use its head builders
 * and checks, and hand an exchange over to it where it stops being common.
 */
#ifndef PIBL_EXCHANGE_H
#define PIBL_EXCHANGE_H

#include "cache.h"
#include "http.h"
#include "pibl.h"
#include "upstream.h"

#include <stdint.h>

#define MAX_INTERIM          8        /* 1xx answers relayed before the final one; one more is a 502 */
#define MAX_LOG_UA           256      /* User-Agent kept for the log, cut past it */
#define MAX_LOG_REFERER      512      /* Referer kept for the log, cut past it */

struct conn;

/*
 * One request/answer exchange. Everything up to `req` is zeroed for each
 * request; the large arrays after it are set before they are read. It lives
 * in the connection's buffer block, not on the thread's stack.
 */
struct exchange {
    int64_t t_start;               /* us */
    int minor;                     /* client's HTTP minor version */
    int is_head;
    int keep_alive;                /* the client connection may stay open */
    int expect_continue;
    int retryable;                 /* idempotent with no body: may be resent */
    int upgrade;                   /* a WebSocket upgrade was asked (RFC 6455 4.1) */
    uint64_t up_bytes;             /* a tunnel's bytes from the client to the backend */
    uint64_t sent_bytes;           /* request head and body bytes sent to the backend */
    struct http_body body;         /* request body framing */
    int body_done;                 /* request body fully read from the client */
    int backend;                   /* -1 until one is chosen */
    int status;                    /* answered status, 0 = none */
    int from_backend;              /* status is the backend's own answer (not PIBL's error) */
    uint64_t bytes;                /* answer body bytes sent */
    const char *err;               /* reason for the log, or NULL */
    int cache;                     /* enum cache_status */
    uint64_t tried;                /* backends already tried (bit mask) */
    int n_tried;                   /* entries in tried_order */
    int fail_status;               /* answer when no backend is left, 0 = 503 */
    const char *fail_why;
    int proto_raw;                 /* a refused request line: log proto, not HTTP/1.minor */
    /* The cache (RFC 9111); see cachepolicy.h. */
    int key_len;                   /* 0 when not cacheable */
    int store_ok;                  /* the answer may be stored */
    int invalidate;                /* unsafe method: drop the entry on success */
    int must_ask;                  /* request no-cache: revalidate even a fresh entry */
    long req_max_age;              /* request max-age and min-fresh, s (-1: none; */
    long req_min_fresh;            /*   RFC 9111 5.2.1.1, 5.2.1.3) */
    int only_if_cached;            /* request only-if-cached: 504 rather than a backend */
    int locked;                    /* holds the collapsing lock for key */
    int stored;                    /* the answer is being stored */
    int revalidated;               /* origin said 304 to our conditional */
    long age;                      /* Age of what is served from the cache */
    uint64_t body_from;            /* first byte of the stored body sent (a Range) */
    long ttl_left;                 /* freshness left, s (negative: stale) */
    const char *cs_fwd;            /* Cache-Status fwd= reason */
    const char *cs_detail;         /* Cache-Status detail= of a STALE answer */
    size_t cond_len;               /* bytes in cond */

    struct http_request req;       /* views into the connection's head buffer */
    char method[32];               /* copies for the log line, as received */
    char target[512];              /* cut for the log */
    char host[MAX_HOST_NAME];
    char proto[16];                /* with proto_raw: its protocol as received, "" = none */
    char ua[MAX_LOG_UA];           /* User-Agent, "" = none */
    char referer[MAX_LOG_REFERER]; /* Referer, "" = none */
    unsigned char tried_order[MAX_BACKENDS];   /* backend slots tried, in order, each once */
    char key[MAX_CACHE_KEY + 1];   /* cache key */
    struct cache_entry stale;      /* expired entry: revalidate or stale-if-error */
    struct cache_entry hit;        /* entry being sent by the event loop */
    char cond[600];                /* conditional fields for revalidation */
};

/* What becomes of the client connection after an exchange. */
enum exchange_next {
    EXCHANGE_CLOSE = -1,           /* close it */
    EXCHANGE_KEEP = 0,             /* wait for the next request */
    EXCHANGE_IDLE = 1,             /* no request came for IDLE_SHRINK_MS: nothing is buffered */
    EXCHANGE_TUNNEL = 2,           /* a 101 made it a tunnel: c->u is its backend end */
};

/* How reading a backend's answer head ended. */
enum exchange_answer {
    ANSWER_OK = 0,                 /* a whole head */
    ANSWER_NONE_EOF,               /* closed before one byte */
    ANSWER_NONE_TIMEOUT,           /* silent for backend_timeout */
    ANSWER_BAD,                    /* malformed or too large */
    ANSWER_CUT,                    /* stopped midway */
    ANSWER_CLIENT_GONE,            /* the client went away meanwhile (u closed) */
    ANSWER_UPGRADE,                /* a 101 that accepts the upgrade asked for */
    ANSWER_BAD_WHY,                /* invalid as x->fail_why says: a 101 to anything else, too many 1xx */
};

/* Start a fresh exchange: zero the small fields, mark the rest empty. */
void exchange_reset(struct exchange *x);

/*
 * Serve one request on c with blocking I/O, from reading its head to the
 * log line, under the config of its time (c->cfg is set to it). Returns an
 * enum exchange_next.
 */
int exchange_serve(struct conn *c);

/*
 * Check a parsed request head (x->req) and fill the exchange: target form,
 * Host, body framing, Connection, Expect. Returns 0, or -1 with *status the
 * error status to answer and *why naming the problem. host/host_len get
 * the Host to forward, path/path_len the origin-form target.
 */
int exchange_check_request(const struct pibl_config *cfg, struct exchange *x, int *status,
    const char **why, const char **host, size_t *host_len, const char **path, size_t *path_len,
    struct http_tokens *ct);

/*
 * Write the head to send to backend into c->out: request line in
 * origin-form and HTTP/1.1, Host first, hop-by-hop fields dropped, then
 * X-Forwarded-For, X-Forwarded-Proto and Via (RFC 9110 7.6.3).
 * Returns its length, or -1 when it does not fit.
 */
long exchange_upstream_head(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len, const struct http_tokens *ct, int backend);

/*
 * Rewrite a backend's answer head into c->out for the client: framing and
 * Connection of this connection, the cache fields, no hop-by-hop fields
 * nor PIBL-Cache-Control. Returns the head length, or -1 on overflow.
 */
long exchange_client_head(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct, int out_chunked);

/* End an answer head: the Connection field this client needs (close, or
 * keep-alive for HTTP/1.0, RFC 9112 9.3) and the blank line. */
void exchange_put_head_end(struct http_builder *b, const struct exchange *x);

/*
 * Forward the request to a backend, retrying where it is safe (from the
 * backends in x->tried on), and relay the answer; stale-if-error and the
 * error answer when none is left. Returns 0 to keep the client connection,
 * -1 to close it, EXCHANGE_TUNNEL when a 101 accepted a WebSocket upgrade
 * (the 101 was relayed; c->u is the backend end of the tunnel).
 */
int exchange_forward(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len, const struct http_tokens *ct);

/*
 * 1xx answers (the head in c->uin): relay them to HTTP/1.1 clients and read
 * on until the final answer. Returns an enum exchange_answer for that one.
 */
int exchange_relay_interim(struct conn *c, struct exchange *x, struct upstream *u, size_t *len,
    long *rh_len);

/* The final answer's head is in c->uin (len bytes read): relay it, then
 * pool or close u. Returns 0 to keep the client connection, -1 to close it. */
int exchange_relay_final(struct conn *c, struct exchange *x, struct upstream *u, size_t len,
    long rh_len, int64_t t_sent);

/*
 * Answer the client with an error of our own: a small text body naming the
 * problem. The connection is to close afterwards unless keep is set and the
 * request was read whole. Returns 0 or -1 (client gone).
 */
int exchange_error(struct conn *c, struct exchange *x, int status, const char *why, int keep);

/* Write the exchange's log line (and count it). */
void exchange_log(const struct conn *c, const struct exchange *x);

/* Backend slot b is being tried: note it for the log (once, in order). */
void exchange_note_tried(struct exchange *x, int b);

/*
 * End an exchange: the cache's part (cachepolicy_end), the log line.
 * keep is what the exchange said (0, -1, or EXCHANGE_TUNNEL: then nothing
 * is done yet, and that is returned). Returns 0 to keep the connection, -1
 * to close it.
 */
int exchange_end(struct conn *c, struct exchange *x, int keep);

/* Exchanges logged since start. */
uint64_t exchange_requests_total(void);

#endif
