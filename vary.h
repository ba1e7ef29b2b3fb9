/*
 * vary.h - Vary and the variants of a URL (vary.cpp), RFC 9111 4.1.
 * Return convention: 0 or 1 for yes/no answers, -1 for "cannot"; the values
 * are "name=value\n" lines, as an entry keeps them (cache_entry.vary).
 */
#ifndef PIBL_VARY_H
#define PIBL_VARY_H

#include <stddef.h>

struct cache_entry;
struct exchange;
struct http_request;
struct http_response;

#define MAX_VARIANTS 8               /* variant slots of a URL beside its own key */

/*
 * The values of request r for the names in the Vary fields of resp, into
 * out (cap bytes, NUL-terminated; "" when resp varies on nothing).
 * Returns 0, or -1 for "Vary: *" or values that do not fit.
 */
int vary_of(const struct http_request *r, const struct http_response *resp, char *out,
    size_t cap);

/* 1 when request r carries the values an entry was stored for (its vary). */
int vary_matches(const struct http_request *r, const char *stored);

/*
 * Look up x->key in the cache; when the URL's entry was stored for other
 * values, the variant slots are searched for this request's values from
 * the one their hash names. Returns 1 with e held (cache_release it; judge
 * it with vary_matches: when the values do not fit a slot key, the URL's
 * entry for other values comes back), 0 when the URL has no entry, 2 when
 * it has only other variants: x->key is then the slot to store this one in.
 */
int vary_lookup(struct exchange *x, struct cache_entry *e);

/* Remove a URL's entry (key, or a variant slot's key) and all its variants.
 * Returns 1 when one was there, 0 otherwise. */
int vary_remove_url(const char *key, size_t len);

#endif
