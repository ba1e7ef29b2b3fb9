/*
 * refresh.h - stale-while-revalidate (RFC 5861 3) in the background
 * (refresh.cpp): the one request that refreshes an entry served stale, on a
 * thread of its own, while clients keep getting the stale answer at once.
 */
#ifndef PIBL_REFRESH_H
#define PIBL_REFRESH_H

#include "http.h"
#include "pibl.h"

#include <stddef.h>

/*
 * Refresh the entry of key in the background: send head (a whole request
 * head for a backend, with our conditionals) to the next backend in round
 * robin; a 304 updates the entry's fields, a storable answer replaces it,
 * anything else leaves it. req is the client request the entry is for (its
 * Vary values and Authorization count when the answer is stored); it is
 * copied. The caller holds the key's collapsing lock (cache_lock): the
 * refresh owns it from here and releases it when done, so that there is
 * one refresh per key. Returns 0 when started, -1 when not (the lock is
 * then released).
 */
int refresh_start(const struct pibl_config *cfg, const char *key, size_t key_len,
    const struct http_request *req, const char *head, size_t head_len);

/* Refreshes running now (for tests and the status page). */
int refresh_running(void);

#endif
