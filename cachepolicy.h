/*
 * cachepolicy.h - the HTTP rules of the cache (cachepolicy.cpp), RFC 9111
 * and RFC 9211: what a request may take from the cache, what an answer may
 * leave in it and for how long, Vary, conditionals, 304 revalidation, PURGE,
 * stale-if-error, and the heads of answers served from an entry. The files
 * themselves are cache.h's. Both the blocking exchange and the event loops
 * decide with the same functions (cachepolicy_plan, cachepolicy_judge).
 */
#ifndef PIBL_CACHEPOLICY_H
#define PIBL_CACHEPOLICY_H

#include "cache.h"
#include "http.h"
#include "pibl.h"

#include <stddef.h>
#include <stdint.h>

struct conn;
struct exchange;

/* What the cache makes of a request, before any lookup. */
enum cachepolicy_plan {
    PLAN_FORWARD,                  /* straight to a backend (x->cs_fwd says why) */
    PLAN_PURGE,                    /* a PURGE: answered here */
    PLAN_LOOKUP,                   /* a GET or HEAD the cache may answer */
};

/*
 * Read the request in x (checked already; host may be NULL) for the cache:
 * its key, whether its answer may be stored, whether it invalidates the
 * entry (an unsafe method), whether the request's own Cache-Control or
 * Pragma skips the cache. Returns an enum cachepolicy_plan.
 */
int cachepolicy_plan(struct exchange *x, const char *host, size_t host_len, const char *path,
    size_t path_len);

/* What a stored entry found for the key can do for this request. */
enum cachepolicy_verdict {
    ENTRY_FRESH,                   /* serve it */
    ENTRY_STALE,                   /* expired, or refused by the request's no-cache,
                                      max-age or min-fresh: revalidate it, or stale-if-error */
    ENTRY_OTHER_VARIANT,           /* stored for other values of its Vary fields */
};

/* Judge entry e for the request in x, once cachepolicy_plan() has read the
 * request's Cache-Control into x. Returns an enum cachepolicy_verdict. */
int cachepolicy_judge(const struct exchange *x, const struct cache_entry *e);

/* What cachepolicy_front() did. */
enum cachepolicy_front { FRONT_FORWARD, FRONT_DONE_KEEP, FRONT_DONE_CLOSE };

/*
 * The cache's part of a request in a blocking thread, before any backend
 * is asked: PURGE, lookups, waiting for a concurrent fetch of the same key
 * (up to cache_lock_timeout), the conditionals to revalidate an expired
 * entry. Returns FRONT_FORWARD to go on to a backend, or FRONT_DONE_* when
 * the answer was given here (keep or close the connection): a hit, a PURGE,
 * or the 504 of an only-if-cached request with no fresh entry.
 */
int cachepolicy_front(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len);

/* What cachepolicy_front_loop() found. */
enum cachepolicy_loop {
    LOOP_HIT,                      /* fresh entry in x->hit, its head in c->out */
    LOOP_MISS,                     /* fetch it here (a GET holds the key's lock) */
    LOOP_HAND_OVER,                /* anything else: a blocking thread starts over */
};

/*
 * The same decision for a GET or HEAD without a body in an event loop,
 * never waiting: an expired entry, another Vary variant, a request that
 * skips the cache or a fetch of the same key in flight hand over. On
 * LOOP_HIT, *head_len bytes of head are in c->out and *body body bytes
 * follow (in x->hit.body when small, else in the file at x->hit.body_off).
 */
int cachepolicy_front_loop(struct conn *c, struct exchange *x, long *head_len, uint64_t *body);

/* 1 when the answer in resp is to be stored (the loops hand those over). */
int cachepolicy_will_store(const struct conn *c, const struct exchange *x,
    const struct http_response *resp);

/*
 * Start storing the answer in resp when it may be stored: its head for the
 * cache is written into c->out. Returns the writer (the caller commits or
 * aborts it), or NULL; x->stored says which.
 */
struct cache_writer *cachepolicy_store_begin(struct conn *c, struct exchange *x,
    const struct http_response *resp, const struct http_tokens *ct);

/*
 * Start storing answer resp to request req under key (any thread): its
 * head for the entry is built in buf (cap bytes). Returns the writer, or
 * NULL when the answer may not be stored or the cache cannot take it.
 */
struct cache_writer *cachepolicy_store_answer(const struct pibl_config *cfg,
    const struct http_request *req, const char *key, size_t key_len,
    const struct http_response *resp, const struct http_tokens *ct, char *buf, size_t cap);

/*
 * Rewrite entry e (found for key, stored for request req) with the fields
 * of answer upd, a 304 or a HEAD answer, merged in (RFC 9111 3.2, 4.3.4),
 * its lifetime and age computed again: replaced atomically, or removed when
 * the new fields forbid storing it. buf (cap bytes) is scratch. Returns 1
 * when a new entry was written, 0 when e stayed (or was removed), -1 when e
 * could not be read.
 */
int cachepolicy_update(const struct pibl_config *cfg, const struct http_request *req,
    const char *key, size_t key_len, struct cache_entry *e, const struct http_response *upd,
    const struct http_tokens *ct, char *buf, size_t cap);

/* How serving from an entry went. */
enum cachepolicy_served {
    SERVE_OK = 0,                  /* served: keep-alive as x says */
    SERVE_CLIENT_GONE,             /* close */
    SERVE_NONE,                    /* nothing sent: no such entry, or unreadable */
    SERVE_REFUSED,                 /* nothing sent: the stale entry must not be served */
};

/* 1 when the request sent to the backend carries our conditionals for x->stale. */
int cachepolicy_revalidating(const struct exchange *x);

/* The backend said 304 (resp, its Connection names in ct) to our
 * conditionals: x->stale is fresh again with the fields the 304 carries
 * (RFC 9111 4.3.4), rewritten atomically; serve it. resp may point into
 * c->uin. Returns an enum cachepolicy_served. */
int cachepolicy_refresh(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct);

/*
 * A HEAD was answered 200 (resp): the stored GET answer for its key is
 * invalidated when its ETag, Last-Modified or length differ, else its
 * fields are updated as by a 304 (RFC 9111 4.3.5) and the client gets the
 * updated entry's head. Returns an enum cachepolicy_served: SERVE_NONE
 * when nothing was sent (relay resp as it is).
 */
int cachepolicy_head_answered(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct);

/* No backend could answer: serve x->stale if it is within its
 * stale-if-error, or else cache_stale_if_error, of its expiry (RFC 5861);
 * SERVE_REFUSED when its fields forbid a stale answer (must-revalidate,
 * proxy-revalidate, s-maxage, no-cache). Returns an enum cachepolicy_served. */
int cachepolicy_stale_if_error(struct conn *c, struct exchange *x);

/* The backend answered status: a 500, 502, 503 or 504 is an error as well
 * (RFC 5861 4), and x's expired entry is served in its place on the same
 * terms. SERVE_NONE when it is not (relay the backend's answer). */
int cachepolicy_stale_on_5xx(struct conn *c, struct exchange *x, int status);

/*
 * The head of an answer from entry e, into c->out: the stored head with
 * Age, X-Cache and Cache-Status, or a 304 when the client's conditionals
 * match. x->cache says which kind of answer this is. Returns its length
 * with *body the body bytes to send after it, or -1 when the entry is
 * unreadable.
 */
long cachepolicy_entry_head(struct conn *c, struct exchange *x, struct cache_entry *e,
    uint64_t *body);

/* Age, X-Cache and Cache-Status (RFC 9211) for an answer. */
void cachepolicy_put_fields(struct http_builder *b, const struct exchange *x);

/* 1 for a field PIBL sets itself on answers, never copied from a stored head. */
int cachepolicy_own_field(const struct http_header *h);

/* The backend answered resp: after an unsafe method, a success or a
 * redirect invalidates the target and the same-host URIs in its Location
 * and Content-Location fields (RFC 9111 4.4). */
void cachepolicy_answered(struct exchange *x, const struct http_response *resp);

/* End of an exchange: the collapsing lock, the invalidation after an
 * unsafe method, the entries it held. */
void cachepolicy_end(struct exchange *x);

/* Let requests collapsed behind x go now (the lock, if x holds it). */
void cachepolicy_unlock(struct exchange *x);

#endif
