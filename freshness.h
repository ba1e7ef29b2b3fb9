/*
 * freshness.h - reading the fields that say how long an answer stays fresh
 * (freshness.cpp): Cache-Control and the targeted fields that override it
 * (RFC 9111 5.2, RFC 9213), Age (RFC 9111 5.1) and Expires (RFC 9111 5.3).
 * Pure parsers over parsed header fields: no I/O, no clock, no config.
 * What the cache does with the result is cachepolicy.h's.
 */
#ifndef PIBL_FRESHNESS_H
#define PIBL_FRESHNESS_H

#include "http.h"

#include <stddef.h>
#include <time.h>

#define MAX_NO_CACHE_FIELDS  16       /* names in no-cache="..." or private="..." */
#define FRESHNESS_DEVICE     "pibl"   /* our name in Surrogate-Control "directive;pibl" */

/* The Cache-Control directives a shared cache acts on. Deltas are -1 when
 * absent or invalid, and capped at 2^31 - 1 (RFC 9111 1.2.2). */
struct cache_ctl {
    int no_store;
    int no_cache;                  /* bare no-cache: revalidate every time */
    int is_private;                /* bare private: not for a shared cache */
    int is_public;
    int must_revalidate;           /* must-revalidate or proxy-revalidate */
    int only_if_cached;            /* request: only-if-cached */
    int must_understand;           /* RFC 9111 5.2.2.3 */
    long max_age;
    long s_maxage;
    long stale_while_revalidate;   /* RFC 5861 */
    long stale_if_error;           /* RFC 5861 */
    long max_stale;                /* request: max-stale (LONG_MAX when bare) */
    long min_fresh;                /* request */
    int n_omit;                    /* no-cache="a, b" / private="a, b": fields not to store */
    struct { const char *name; size_t len; } omit[MAX_NO_CACHE_FIELDS];
};

/*
 * Read every field called name ("cache-control", "cdn-cache-control", ...)
 * in hdrs into cc (zeroed first). Unknown directives are ignored; a
 * directive given twice keeps its first value. Returns how many directives
 * were read (Surrogate-Control: those for other devices are not).
 */
int freshness_cache_control(const struct http_header *hdrs, int n, const char *name,
    struct cache_ctl *cc);

/*
 * The freshness directives PIBL acts on, from the first of these fields
 * with a directive for PIBL (RFC 9213: a targeted field wins over
 * Cache-Control as a whole):
 * PIBL-Cache-Control, CDN-Cache-Control, Surrogate-Control, Cache-Control.
 * Returns the name of the one used (lower-cased), or NULL when none.
 */
const char *freshness_targeted(const struct http_header *hdrs, int n, struct cache_ctl *cc);

/* 1 for PIBL-Cache-Control, the targeted field meant for PIBL alone, which
 * answers to clients do not carry (CDN-Cache-Control and Surrogate-Control
 * go on, for the caches after PIBL). */
int freshness_is_own(const struct http_header *h);

/* What freshness_age() found. */
#define AGE_NONE     0                /* no Age field: 0 s */
#define AGE_INVALID  (-1)             /* not one non-negative integer */

/*
 * The Age of an answer in seconds (capped at 2^31 - 1), AGE_NONE when it
 * has none, or AGE_INVALID when its Age fields do not hold exactly one
 * non-negative integer (a sign, a fraction, a parameter, a list, several
 * lines): the cache then takes the answer as stale on arrival.
 */
long freshness_age(const struct http_header *hdrs, int n);

/* What freshness_expires() found. */
enum freshness_expires { EXPIRES_NONE, EXPIRES_AT, EXPIRES_INVALID };

/*
 * The Expires field: EXPIRES_AT with *when set, EXPIRES_NONE without one,
 * EXPIRES_INVALID for a value that is not an HTTP-date or for several
 * Expires fields (both mean "already expired", RFC 9111 5.3).
 */
int freshness_expires(const struct http_header *hdrs, int n, time_t *when);

#endif
