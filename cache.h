/*
 * cache.h - the cache's files (cache.cpp): the key, hashed file names in the
 * cache folder, TTL by mtime, store through a temp file and rename(), lookup,
 * LRU eviction and request collapsing. The HTTP rules of what is stored and
 * served are cachepolicy.h's.
 */
#ifndef PIBL_CACHE_H
#define PIBL_CACHE_H

#include "pibl.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MAX_CACHE_KEY        4096     /* longer keys are not cached */
#define MAX_VARY_BYTES       1024     /* request values an entry varies on */

/* Cache status of one exchange, for the log line and X-Cache. */
enum cache_status { CACHE_NONE, CACHE_HIT, CACHE_MISS, CACHE_EXPIRED, CACHE_STALE, CACHE_BYPASS };

/* A stored entry found by cache_lookup, open for reading. */
struct cache_entry {
    int fd;                        /* -1: none */
    int slot;                      /* private: open-entry slot, -1 = own fd */
    const char *head;              /* private: stored head in memory, or NULL */
    const char *body;              /* the body in memory (small entries), or NULL */
    uint64_t hash;
    long lifetime;                 /* s, capped by the launch TTL */
    long initial_age;              /* s old when stored (the origin's Age) */
    long age;                      /* initial_age + s since stored or revalidated (mtime) */
    int fresh;                     /* age < lifetime */
    int status;
    off_t head_off;                /* stored head: file offset and length */
    size_t head_len;
    off_t body_off;                /* body: file offset and length */
    uint64_t body_len;
    char vary[MAX_VARY_BYTES];     /* "name=value\n" lines it was stored for */
};

struct cache_writer;

/* Name of a cache status ("-", "HIT", ...). */
const char *cache_status_name(int status);

/*
 * Prepare the cache folder (made if missing), check that a file can be
 * written in it, delete temp files a crash left, index the entries and
 * start the eviction thread. TTL 0: cache off.
 * Returns 0, or -1 (errno set) when the folder is unusable: cache off.
 */
int cache_init(const struct pibl_config *cfg);

/* 1 when the cache is on. */
int cache_enabled(void);

/* Why the cache is off ("TTL 0", or "folder F unusable: why"), or NULL
 * when it is on. */
const char *cache_off_reason(void);

/*
 * Whether a cache could work in folder dir: it is a folder (or can be
 * made) where a file can be created. make: make it when missing; else a
 * missing folder is checked by writing in its parent (pibl -t). Returns 0,
 * or -1 with the reason in why ("not a folder", ...). Leaves nothing else
 * behind.
 */
int cache_check_folder(const char *dir, int make, char *why, size_t why_len);

/* cache_max_bytes and cache_max_object from cfg: at start-up, and again on
 * each reload (they apply to the next writes and the next eviction). */
void cache_set_limits(const struct pibl_config *cfg);

/* Launch TTL in seconds. */
long cache_ttl(void);

/* Build the key "http://host/target" (host lower-cased, without a ":80" or
 * empty port; a target that is empty or starts with "?" gets its "/") into
 * buf. Returns its length, or -1 when it is longer than MAX_CACHE_KEY. */
int cache_key(char *buf, size_t cap, const char *host, size_t host_len, const char *target,
    size_t target_len);

/*
 * Open the entry for key. Returns 1 with e filled (fresh or not; the caller
 * must cache_release it), 0 when there is none. A damaged entry is deleted
 * and reported as none. Blocks on disk only.
 */
int cache_lookup(const char *key, size_t key_len, struct cache_entry *e);

/* Close an entry from cache_lookup (safe on an empty one). */
void cache_release(struct cache_entry *e);

/* Read the stored head into buf. Returns 0, or -1 if it does not fit. */
int cache_read_head(const struct cache_entry *e, char *buf, size_t cap);

/* Mark the entry fresh again (mtime = now) after a 304 from the origin. */
void cache_touch(const struct cache_entry *e);

/* Delete the entry for key. Returns 1 if one was deleted, 0 if none. */
int cache_remove(const char *key, size_t key_len);

/*
 * Start storing an answer: a temp file gets the meta block and head. The
 * answer was age seconds old when it came (RFC 9111 4.2.3) and is fresh for
 * lifetime seconds of age. vary holds "name=value\n" lines (or ""). Returns
 * NULL when it cannot store (logged once); the caller then just serves
 * without storing.
 */
struct cache_writer *cache_store_begin(const char *key, size_t key_len, int status, long lifetime,
    long age, const char *vary, const char *head, size_t head_len);

/*
 * Give entry e (from cache_lookup for key) a new head, lifetime and initial
 * age, keeping its status, Vary values and body: a 304 or a HEAD answer
 * updated it (RFC 9111 4.3.4, 4.3.5). Written like any store, a temp file
 * with the body copied from e, renamed over the entry; a new entry stored
 * meanwhile is left alone. Returns 0, or -1 with the old entry unchanged.
 */
int cache_update(const struct cache_entry *e, const char *key, size_t key_len, long lifetime,
    long age, const char *head, size_t head_len);

/* Append body bytes. Returns 0, or -1 after abandoning the entry (too big,
 * disk full): the writer is freed and must not be used again. */
int cache_store_write(struct cache_writer *w, const char *data, size_t len);

/* Make the entry visible (rename). Frees w. Returns 0 or -1. */
int cache_store_commit(struct cache_writer *w);

/* Drop an unfinished entry. Frees w. Safe on NULL. */
void cache_store_abort(struct cache_writer *w);

/* Counters for the status page. */
struct cache_stats {
    uint64_t entries;
    uint64_t bytes;
    uint64_t hits;                 /* HIT and STALE answers */
    uint64_t lookups;              /* answers with any cache status but BYPASS */
};

/* Count one answer with this cache status. */
void cache_note(int status);

/* Read the counters. */
void cache_get_stats(struct cache_stats *st);

/* What cache_lock() ended with. */
enum cache_lock_result {
    CACHE_LOCK_TIMEOUT = -1,       /* waited timeout_s (or out of memory): fetch unlocked */
    CACHE_LOCK_WAITED = 0,         /* another fetch of the key finished: look up again */
    CACHE_LOCK_OWNED = 1,          /* the caller fetches key and must cache_unlock it */
};

/* Request collapsing: one fetch per key at a time. Returns an enum
 * cache_lock_result; blocks up to timeout_s (0: never waits). */
int cache_lock(const char *key, size_t key_len, int timeout_s);
void cache_unlock(const char *key, size_t key_len);

#endif
