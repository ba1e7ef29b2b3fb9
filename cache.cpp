/*
 * cache.cpp - the disk cache: keys, hashed file names, TTL by mtime, entries
 * written through a temp file and rename(), lookup with length checks, the
 * request-collapsing locks and LRU eviction from a thread of its own.
 *
 * An entry is one file <dir>/<2 hex>/<16 hex>, named by the FNV-1a hash of
 * its key, holding a text meta block, the stored response head and the body:
 *
 *   PIBL-CACHE 1
 *   key: http://host/target
 *   lifetime: 60
 *   status: 200
 *   age: 0                              (the origin's Age when stored)
 *   head-length: 153
 *   vary: accept-language=es            (zero or more)
 *   body-length: 00000000000000001432
 *
 *   <head-length bytes of head><body-length bytes of body>
 *
 * The full key is stored and compared, so a hash collision is a miss, never
 * the wrong resource. An entry is fresh while its age, the stored age plus
 * now - mtime, is below its lifetime. It is
 * written to <dir>/.tmp-* and renamed into place only when complete, so a
 * crash at any moment leaves either the old entry, the new one or a temp
 * file (removed at start-up); a file whose size does not add up is deleted
 * when found, never served.
 *
 * It does not parse HTTP: cachepolicy.cpp decides what is cacheable and for how
 * long, and hands over the bytes. Limits: cache_max_bytes in total (least
 * recently used entries evicted off the request path), cache_max_object per
 * entry, MAX_CACHE_KEY bytes of key, META_MAX bytes of meta block.
 */
#include "cache.h"
#include "log.h"
#include "pibl.h"

#include <atomic>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>
#include <algorithm>

#define META_MAX           (MAX_CACHE_KEY + 2048)
#define EVICT_PERIOD_MS    1000
#define BODY_LEN_DIGITS    20

struct index_entry {
    uint64_t size;                 /* file size in bytes */
    int64_t last_use;              /* seconds, for LRU */
};

static char g_dir[PATH_MAX - 64];  /* cache folder (config caps its length) */
static char g_off_reason[400];     /* why the cache is off, for start-up and the status page */
static long g_ttl;                 /* launch TTL; 0 = cache off */
static std::atomic<uint64_t> g_max_bytes;    /* cache_max_bytes (cache_set_limits) */
static std::atomic<uint64_t> g_max_object;   /* cache_max_object */

static pthread_mutex_t g_index_lock = PTHREAD_MUTEX_INITIALIZER;
static std::unordered_map<uint64_t, struct index_entry> *g_index;  /* by hash */
static uint64_t g_total;           /* bytes in g_index */
static std::atomic<uint64_t> g_tmp_seq;
static std::atomic<int> g_warned;  /* one warning per burst of store errors */

/* In-flight fetches for request collapsing. */
struct inflight {
    uint64_t hash;
    struct inflight *next;
};
static pthread_mutex_t g_fetch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_fetch_done = PTHREAD_COND_INITIALIZER;
static struct inflight *g_inflight;

/*
 * Open entries, kept between lookups (like nginx's open_file_cache): the
 * descriptor, the parsed meta block and a copy of the stored head (a few
 * hundred bytes; never the body). A hit then costs one fstat() of the open
 * descriptor to see that nothing was done to the file since it was opened,
 * instead of open + read + parse + close: size, mtime, link count and
 * ctime unchanged. Every unlink, rename (over it or away), link, write,
 * truncate or touch of the file changes its ctime (and unlink its link
 * count), so the path still names this inode; fstat() skips the path walk
 * that a stat() of the path pays. What leaves the inode alone (a folder
 * above it renamed or swapped) is caught by a stat() of the path at the
 * first hit of each second. Slots are direct-mapped by hash; a slot in use
 * by a request (refs > 0) is never changed under it.
 *
 * A reference is taken under g_open_lock but dropped without it, so that
 * the hits on a hot entry take the lock once, not twice. Dooming stores
 * doomed before it reads refs, and a release drops refs before it reads
 * doomed: one of the two sees the other, and clears the slot under the
 * lock after checking again.
 */
#define OPEN_SLOTS 1024
#define MEM_BODY_BYTES 8192       /* bodies up to this stay in memory with the head */

struct open_slot {
    int fd;                        /* -1: empty */
    std::atomic<int> refs;         /* lookups holding fd */
    std::atomic<int> doomed;       /* close when refs drops to 0 */
    int64_t touched;               /* second of the last index_touch for it */
    uint64_t hash;
    dev_t dev;
    ino_t ino;
    off_t size;
    nlink_t nlink;
    struct timespec mtime, ctime;
    char *key;                     /* malloc'd, NUL-terminated */
    size_t key_len;
    char *head;                    /* malloc'd copy of the stored head */
    char *body;                    /* the body, right after head in the same
                                    * block, when at most MEM_BODY_BYTES; or NULL */
    struct cache_entry meta;       /* parsed fields (no age, no fd) */
};

static pthread_mutex_t g_open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_slot g_open[OPEN_SLOTS];
static int g_open_ready;

struct cache_writer {
    int fd;
    char tmp[PATH_MAX];
    char path[PATH_MAX];
    uint64_t hash;
    off_t body_len_at;             /* offset of the body-length digits */
    uint64_t body_bytes;
};

const char *
cache_status_name(int status)
{
    switch (status) {
    case CACHE_HIT: return "HIT";
    case CACHE_MISS: return "MISS";
    case CACHE_EXPIRED: return "EXPIRED";
    case CACHE_STALE: return "STALE";
    case CACHE_BYPASS: return "BYPASS";
    }
    return "-";
}

int
cache_enabled(void)
{
    return g_ttl > 0;
}

long
cache_ttl(void)
{
    return g_ttl;
}

/* FNV-1a, 64 bits: cheap and spreads file names evenly over the folders. */
static uint64_t
hash_key(const char *key, size_t len)
{
    uint64_t h = 14695981039346656037ULL;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void
entry_path(uint64_t h, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%02x/%016llx", g_dir, (unsigned)(h >> 56), (unsigned long long)h);
}

static int64_t
now_s(void)
{
    return (int64_t)time(NULL);
}

static void
warn_store(const char *what)
{
    if (g_warned.exchange(1) == 0)
        log_line("pibl: warning: cache: %s: %s (answers are served, not stored)", what,
            strerror(errno));
}

int
cache_key(char *buf, size_t cap, const char *host, size_t host_len, const char *target,
    size_t target_len)
{
    /* One key for one resource (RFC 9110 4.2.3): the default port, or an
     * empty one, is left out, and an empty path is "/". */
    if (host_len >= 3 && memcmp(host + host_len - 3, ":80", 3) == 0)
        host_len -= 3;
    else if (host_len >= 1 && host[host_len - 1] == ':')
        host_len -= 1;
    int slash = target_len == 0 || target[0] == '?';
    if (host_len + target_len + slash + 8 > cap || host_len + target_len + slash + 8 > MAX_CACHE_KEY)
        return -1;
    memcpy(buf, "http://", 7);
    for (size_t i = 0; i < host_len; i++) {
        char ch = host[i];
        buf[7 + i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    size_t n = 7 + host_len;
    if (slash)
        buf[n++] = '/';
    memcpy(buf + n, target, target_len);
    n += target_len;
    buf[n] = '\0';
    return (int)n;
}

/* ---------------------------------------------------------------- index */

static void
index_put(uint64_t h, uint64_t size, int64_t last_use)
{
    pthread_mutex_lock(&g_index_lock);
    auto it = g_index->find(h);
    if (it != g_index->end())
        g_total -= it->second.size;
    (*g_index)[h] = { size, last_use };
    g_total += size;
    pthread_mutex_unlock(&g_index_lock);
}

static void open_forget(uint64_t h);

/* Forget an entry that is gone from disk (index and open slot). */
static void
index_drop(uint64_t h)
{
    open_forget(h);
    pthread_mutex_lock(&g_index_lock);
    auto it = g_index->find(h);
    if (it != g_index->end()) {
        g_total -= it->second.size;
        g_index->erase(it);
    }
    pthread_mutex_unlock(&g_index_lock);
}

static void
index_touch(uint64_t h)
{
    pthread_mutex_lock(&g_index_lock);
    auto it = g_index->find(h);
    if (it != g_index->end())
        it->second.last_use = now_s();
    pthread_mutex_unlock(&g_index_lock);
}

/*
 * Delete least recently used entries until the total is under 90% of
 * cache_max_bytes. Runs on the eviction thread; the lock is not held while
 * files are unlinked.
 */
static void
evict(void)
{
    std::vector<std::pair<int64_t, uint64_t>> order;

    pthread_mutex_lock(&g_index_lock);
    if (g_total <= g_max_bytes) {
        pthread_mutex_unlock(&g_index_lock);
        return;
    }
    uint64_t target = g_max_bytes.load() / 10 * 9, total = g_total;
    order.reserve(g_index->size());
    for (auto &kv : *g_index)
        order.push_back({ kv.second.last_use, kv.first });
    pthread_mutex_unlock(&g_index_lock);

    std::sort(order.begin(), order.end());
    size_t n_evicted = 0;
    for (auto &o : order) {
        if (total <= target)
            break;
        char path[PATH_MAX];
        struct stat st;
        entry_path(o.second, path, sizeof path);
        if (stat(path, &st) == 0 && unlink(path) == 0) {
            total -= (uint64_t)st.st_size < total ? (uint64_t)st.st_size : total;
            n_evicted++;
        }
        index_drop(o.second);
    }
    log_line("pibl: cache: evicted %zu entries (cache_max_bytes %llu)", n_evicted,
        (unsigned long long)g_max_bytes.load());
}

static void *
evict_main(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(EVICT_PERIOD_MS * 1000);
        evict();
    }
    return NULL;
}

/* Parse a 16-hex-digit file name; returns 0 and the hash, or -1. */
static int
parse_hash_name(const char *name, uint64_t *h)
{
    uint64_t v = 0;

    if (strlen(name) != 16)
        return -1;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (uint64_t)d;
    }
    *h = v;
    return 0;
}

/* Remove temp leftovers of a crash and index the entries already there. */
static void
scan_folder(void)
{
    DIR *top = opendir(g_dir);
    struct dirent *de;
    size_t n_tmp = 0, n_entries = 0;

    if (top == NULL)
        return;
    while ((de = readdir(top)) != NULL) {
        char path[PATH_MAX];
        if (strncmp(de->d_name, ".tmp-", 5) == 0) {
            snprintf(path, sizeof path, "%s/%s", g_dir, de->d_name);
            if (unlink(path) == 0)
                n_tmp++;
            continue;
        }
        if (strlen(de->d_name) != 2 || de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, de->d_name);
        DIR *sub = opendir(path);
        if (sub == NULL)
            continue;
        struct dirent *fe;
        while ((fe = readdir(sub)) != NULL) {
            uint64_t h;
            struct stat st;
            char fpath[PATH_MAX];
            if (parse_hash_name(fe->d_name, &h) == -1)
                continue;
            entry_path(h, fpath, sizeof fpath);
            if (stat(fpath, &st) == 0 && S_ISREG(st.st_mode)) {
                index_put(h, (uint64_t)st.st_size, (int64_t)st.st_mtime);
                n_entries++;
            }
        }
        closedir(sub);
    }
    closedir(top);
    log_line("pibl: cache: %zu entries (%llu bytes) in %s, %zu temp files removed", n_entries,
        (unsigned long long)g_total, g_dir, n_tmp);
}

void
cache_set_limits(const struct pibl_config *cfg)
{
    g_max_bytes.store((uint64_t)cfg->cache_max_bytes);
    g_max_object.store((uint64_t)cfg->cache_max_object);
}

int
cache_init(const struct pibl_config *cfg)
{
    g_ttl = cfg->ttl;
    cache_set_limits(cfg);
    if (g_ttl == 0) {
        snprintf(g_off_reason, sizeof g_off_reason, "TTL 0");
        return 0;
    }
    if (strlen(cfg->cache_dir) >= sizeof g_dir) {
        errno = ENAMETOOLONG;
        snprintf(g_off_reason, sizeof g_off_reason, "folder %.200s unusable: name too long", cfg->cache_dir);
        g_ttl = 0;
        return -1;
    }
    char why[160];
    if (cache_check_folder(cfg->cache_dir, 1, why, sizeof why) == -1) {
        int e = errno;
        snprintf(g_off_reason, sizeof g_off_reason, "folder %.200s unusable: %s", cfg->cache_dir, why);
        g_ttl = 0;
        errno = e;
        return -1;
    }
    memcpy(g_dir, cfg->cache_dir, strlen(cfg->cache_dir) + 1);
    g_index = new std::unordered_map<uint64_t, struct index_entry>();
    for (int i = 0; i < OPEN_SLOTS; i++)
        g_open[i].fd = -1;
    g_open_ready = 1;
    scan_folder();
    return pibl_spawn(evict_main, NULL);
}

const char *
cache_off_reason(void)
{
    return g_ttl > 0 ? NULL : g_off_reason;
}

/* Create and remove a file in folder dir. Returns 0, or -1 with errno. */
static int
probe_write(const char *dir)
{
    char probe[PATH_MAX];

    snprintf(probe, sizeof probe, "%s/.pibl-probe-%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1)
        return -1;
    int ok = write(fd, "x", 1) == 1;
    int e = errno;
    close(fd);
    unlink(probe);
    errno = e;
    return ok ? 0 : -1;
}

/* Writing a file is the only test that also holds for root, on a read-only
 * mount or past a quota. */
int
cache_check_folder(const char *dir, int make, char *why, size_t why_len)
{
    struct stat st;

    if (!make && stat(dir, &st) == -1 && errno == ENOENT) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", dir);
        char *slash = strrchr(parent, '/');
        if (slash == NULL)
            snprintf(parent, sizeof parent, ".");
        else if (slash == parent)
            parent[1] = '\0';
        else
            *slash = '\0';
        if (stat(parent, &st) == -1 || !S_ISDIR(st.st_mode) || probe_write(parent) == -1) {
            snprintf(why, why_len, "cannot be made: %s", strerror(errno == 0 ? ENOTDIR : errno));
            return -1;
        }
        return 0;
    }
    if (make && mkdir(dir, 0755) == -1 && errno != EEXIST) {
        int e = errno;
        snprintf(why, why_len, "cannot create it: %s", strerror(e));
        errno = e;
        return -1;
    }
    if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        snprintf(why, why_len, "not a folder");
        errno = ENOTDIR;
        return -1;
    }
    if (probe_write(dir) == -1) {
        int e = errno;
        snprintf(why, why_len, "cannot write a file in it: %s", strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- lookup */

/* Read "name: value\n" at *p; returns the value (NUL-terminated in place) or NULL. */
static char *
meta_field(char **p, const char *name)
{
    size_t nl = strlen(name);
    char *line = *p, *end = strchr(line, '\n');

    if (end == NULL || strncmp(line, name, nl) != 0 || line[nl] != ':' || line[nl + 1] != ' ')
        return NULL;
    *end = '\0';
    *p = end + 1;
    return line + nl + 2;
}

static int
meta_number(char **p, const char *name, long long *out)
{
    char *v = meta_field(p, name), *end;

    if (v == NULL || *v < '0' || *v > '9')
        return -1;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || n < 0)
        return -1;
    *out = n;
    return 0;
}

/* Delete an entry that is damaged or no longer wanted. */
static void
drop_entry(const char *path, uint64_t h)
{
    unlink(path);
    index_drop(h);
}


static void
slot_clear(struct open_slot *o)
{
    if (o->fd != -1)
        close(o->fd);
    free(o->key);
    free(o->head);
    o->fd = -1;
    o->refs.store(0);
    o->doomed.store(0);
    o->touched = 0;
    o->key = o->head = o->body = NULL;
}

/* Forget the open slot of hash h (file deleted or replaced). */
static void
open_forget(uint64_t h)
{
    if (!g_open_ready)
        return;
    pthread_mutex_lock(&g_open_lock);
    struct open_slot *o = &g_open[h % OPEN_SLOTS];
    if (o->fd != -1 && o->hash == h) {
        o->doomed.store(1);
        if (o->refs.load() == 0)
            slot_clear(o);
    }
    pthread_mutex_unlock(&g_open_lock);
}

static int
same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* 1 when st (an fstat of o's descriptor, so the same device and inode)
 * shows nothing done to the file since o was filled from it. */
static int
same_file(const struct open_slot *o, const struct stat *st)
{
    return o->size == st->st_size && o->nlink == st->st_nlink &&
        same_time(&o->mtime, &st->st_mtim) && same_time(&o->ctime, &st->st_ctim);
}

/* 1 when the entry's path still names the inode o holds open. */
static int
same_path(const struct open_slot *o, uint64_t h)
{
    char path[PATH_MAX];
    struct stat st;

    entry_path(h, path, sizeof path);
    return stat(path, &st) == 0 && st.st_dev == o->dev && st.st_ino == o->ino;
}

/* Fill the age-dependent fields of a found entry. */
static void
entry_age(struct cache_entry *e, time_t mtime)
{
    e->age = (long)(now_s() - (int64_t)mtime);
    if (e->age < 0)
        e->age = 0;
    e->age = e->age > LONG_MAX - e->initial_age ? LONG_MAX : e->age + e->initial_age;
    /* A restart with a shorter TTL shortens what is already stored. */
    if (e->lifetime > g_ttl)
        e->lifetime = g_ttl;
    e->fresh = e->age < e->lifetime;
}

/*
 * Open and parse the entry file for e->hash. Returns 1 with e filled and
 * e->fd open, 0 when absent or another key's, -1 when damaged (deleted).
 */
static int
parse_entry(const char *path, const char *key, size_t key_len, struct cache_entry *e, struct stat *st)
{
    char meta[META_MAX + 1];
    long long v;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd == -1)
        return 0;
    ssize_t n = pread(fd, meta, META_MAX, 0);
    if (n <= 0 || fstat(fd, st) == -1)
        goto bad;
    meta[n] = '\0';
    {
        char *end = strstr(meta, "\n\n"), *p = meta;
        if (end == NULL || strncmp(meta, "PIBL-CACHE 1\n", 13) != 0)
            goto bad;
        end[1] = '\0';
        size_t meta_len = (size_t)(end + 2 - meta);
        p += 13;
        char *k = meta_field(&p, "key");
        if (k == NULL || strlen(k) != key_len || memcmp(k, key, key_len) != 0) {
            close(fd);                          /* another key: a collision */
            return 0;
        }
        if (meta_number(&p, "lifetime", &v) == -1)
            goto bad;
        e->lifetime = (long)v;
        if (meta_number(&p, "status", &v) == -1)
            goto bad;
        e->status = (int)v;
        e->initial_age = 0;                     /* absent in entries of older versions */
        if (strncmp(p, "age: ", 5) == 0) {
            if (meta_number(&p, "age", &v) == -1 || v > 2147483647LL)
                goto bad;
            e->initial_age = (long)v;
        }
        if (meta_number(&p, "head-length", &v) == -1 || v == 0 || v > 65536)
            goto bad;
        e->head_len = (size_t)v;
        size_t vl = 0;
        while (strncmp(p, "vary: ", 6) == 0) {
            char *val = meta_field(&p, "vary");
            if (val == NULL || vl + strlen(val) + 2 > sizeof e->vary)
                goto bad;
            size_t l = strlen(val);
            memcpy(e->vary + vl, val, l);
            vl += l;
            e->vary[vl++] = '\n';
        }
        e->vary[vl] = '\0';
        if (meta_number(&p, "body-length", &v) == -1)
            goto bad;
        e->body_len = (uint64_t)v;
        e->head_off = (off_t)meta_len;
        e->body_off = (off_t)(meta_len + e->head_len);
        /* Truncated or padded: never serve it. */
        if ((uint64_t)st->st_size != meta_len + e->head_len + e->body_len)
            goto bad;
    }
    e->fd = fd;
    return 1;
bad:
    close(fd);
    log_line("pibl: warning: cache: damaged entry %s removed", path);
    drop_entry(path, e->hash);
    return -1;
}

int
cache_lookup(const char *key, size_t key_len, struct cache_entry *e)
{
    char path[PATH_MAX];
    struct stat st;

    e->fd = -1;
    e->slot = -1;
    e->head = e->body = NULL;
    if (g_ttl == 0)
        return 0;
    e->hash = hash_key(key, key_len);

    /* Fast path: the same file as last time, already open and parsed. */
    int idx = (int)(e->hash % OPEN_SLOTS);
    struct open_slot *o = &g_open[idx];
    pthread_mutex_lock(&g_open_lock);
    int held = o->fd != -1 && !o->doomed.load() && o->hash == e->hash &&
        o->key_len == key_len && memcmp(o->key, key, key_len) == 0;
    int touch = 0;
    if (held) {
        o->refs.fetch_add(1);
        /* The LRU clock counts seconds: one touch per second is enough,
         * and a hot entry's hits do not all queue on the index lock. */
        int64_t now = now_s();
        touch = o->touched != now;
        o->touched = now;
    }
    pthread_mutex_unlock(&g_open_lock);
    /* Our reference keeps the slot as it is: read it without the lock,
     * which the other loops want for the same hot entry. */
    if (held && (fstat(o->fd, &st) == -1 || !same_file(o, &st) ||
                 (touch && !same_path(o, e->hash)))) {
        open_forget(e->hash);                   /* changed on disk: doomed, */
        e->slot = idx;
        cache_release(e);                       /* and closed with our reference */
        e->slot = -1;
        held = 0;
    }
    if (held) {
        memcpy(e, &o->meta, offsetof(struct cache_entry, vary));
        memcpy(e->vary, o->meta.vary, strlen(o->meta.vary) + 1);
        e->fd = o->fd;
        e->slot = idx;
        e->head = o->head;
        e->body = o->body;
        entry_age(e, st.st_mtime);
        if (touch)
            index_touch(e->hash);
        return 1;
    }

    entry_path(e->hash, path, sizeof path);
    if (stat(path, &st) == -1) {
        open_forget(e->hash);
        return 0;
    }
    if (parse_entry(path, key, key_len, e, &st) != 1) {
        e->fd = -1;
        return 0;
    }
    entry_age(e, st.st_mtime);
    index_touch(e->hash);

    /* Keep it open for the next lookups, if the slot is free to take, with
     * the head in memory, and a small body too (a hit is then one send). */
    size_t mem = e->head_len + (e->body_len <= MEM_BODY_BYTES ? (size_t)e->body_len : 0);
    char *head = (char *)malloc(mem);
    char *kc = (char *)malloc(key_len + 1);
    if (head != NULL && kc != NULL && pread(e->fd, head, mem, e->head_off) == (ssize_t)mem) {
        pthread_mutex_lock(&g_open_lock);
        if (o->refs.load() == 0) {
            slot_clear(o);
            memcpy(kc, key, key_len);
            kc[key_len] = '\0';
            o->fd = e->fd;
            o->refs.store(1);
            o->hash = e->hash;
            o->dev = st.st_dev;
            o->ino = st.st_ino;
            o->size = st.st_size;
            o->nlink = st.st_nlink;
            o->mtime = st.st_mtim;
            o->ctime = st.st_ctim;
            o->key = kc;
            o->key_len = key_len;
            o->head = head;
            o->body = mem > e->head_len ? head + e->head_len : NULL;
            o->meta = *e;
            e->slot = idx;
            e->head = head;
            e->body = o->body;
            head = kc = NULL;
        }
        pthread_mutex_unlock(&g_open_lock);
    }
    free(head);
    free(kc);
    return 1;
}

void
cache_release(struct cache_entry *e)
{
    if (e->slot >= 0) {
        struct open_slot *o = &g_open[e->slot];
        if (o->refs.fetch_sub(1) == 1 && o->doomed.load()) {
            pthread_mutex_lock(&g_open_lock);
            if (o->fd != -1 && o->refs.load() == 0 && o->doomed.load())
                slot_clear(o);
            pthread_mutex_unlock(&g_open_lock);
        }
    } else if (e->fd != -1) {
        close(e->fd);
    }
    e->fd = -1;
    e->slot = -1;
    e->head = e->body = NULL;
}

int
cache_read_head(const struct cache_entry *e, char *buf, size_t cap)
{
    if (e->head_len > cap)
        return -1;
    if (e->head != NULL) {
        memcpy(buf, e->head, e->head_len);
        return 0;
    }
    ssize_t n = pread(e->fd, buf, e->head_len, e->head_off);
    return n == (ssize_t)e->head_len ? 0 : -1;
}

void
cache_touch(const struct cache_entry *e)
{
    char path[PATH_MAX];

    entry_path(e->hash, path, sizeof path);
    if (utimes(path, NULL) == -1)
        warn_store("cannot refresh an entry");
}

int
cache_remove(const char *key, size_t key_len)
{
    char path[PATH_MAX];
    uint64_t h = hash_key(key, key_len);
    struct cache_entry e;

    if (g_ttl == 0)
        return 0;
    /* Check the stored key first: a colliding entry is not ours to delete. */
    if (cache_lookup(key, key_len, &e) != 1)
        return 0;
    cache_release(&e);
    entry_path(h, path, sizeof path);
    if (unlink(path) == -1)
        return 0;
    index_drop(h);
    return 1;
}

/* ---------------------------------------------------------------- store */

struct cache_writer *
cache_store_begin(const char *key, size_t key_len, int status, long lifetime, long age,
    const char *vary, const char *head, size_t head_len)
{
    if (g_ttl == 0 || head_len > 65536)
        return NULL;
    struct cache_writer *w = (struct cache_writer *)calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->hash = hash_key(key, key_len);
    entry_path(w->hash, w->path, sizeof w->path);
    snprintf(w->tmp, sizeof w->tmp, "%s/.tmp-%d-%llu", g_dir, (int)getpid(),
        (unsigned long long)g_tmp_seq.fetch_add(1));
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd == -1) {
        warn_store("cannot create a temp file");
        free(w);
        return NULL;
    }

    char meta[META_MAX];
    int n = snprintf(meta, sizeof meta, "PIBL-CACHE 1\nkey: %.*s\nlifetime: %ld\nstatus: %d\n"
        "age: %ld\nhead-length: %zu\n", (int)key_len, key, lifetime, status, age, head_len);
    if (n < 0 || (size_t)n >= sizeof meta)
        goto fail;
    for (const char *p = vary; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        int m = snprintf(meta + n, sizeof meta - (size_t)n, "vary: %.*s\n", (int)l, p);
        if (m < 0 || (size_t)(n + m) >= sizeof meta)
            goto fail;
        n += m;
        p += l + (nl ? 1 : 0);
    }
    {
        int m = snprintf(meta + n, sizeof meta - (size_t)n, "body-length: ");
        w->body_len_at = n + m;
        n += m;
        m = snprintf(meta + n, sizeof meta - (size_t)n, "%0*d\n\n", BODY_LEN_DIGITS, 0);
        if (m < 0 || (size_t)(n + m) >= sizeof meta)
            goto fail;
        n += m;
    }
    if (pibl_write_all(w->fd, meta, (size_t)n) == -1 || pibl_write_all(w->fd, head, head_len) == -1) {
        warn_store("cannot write a temp file");
        goto fail;
    }
    return w;
fail:
    cache_store_abort(w);
    return NULL;
}

int
cache_store_write(struct cache_writer *w, const char *data, size_t len)
{
    if (w->body_bytes + len > g_max_object) {
        cache_store_abort(w);
        return -1;
    }
    if (pibl_write_all(w->fd, data, len) == -1) {
        warn_store("cannot write a temp file");
        cache_store_abort(w);
        return -1;
    }
    w->body_bytes += len;
    return 0;
}

int
cache_store_commit(struct cache_writer *w)
{
    char digits[BODY_LEN_DIGITS + 1];
    struct stat st;

    snprintf(digits, sizeof digits, "%0*llu", BODY_LEN_DIGITS, (unsigned long long)w->body_bytes);
    if (pwrite(w->fd, digits, BODY_LEN_DIGITS, w->body_len_at) != BODY_LEN_DIGITS ||
        fstat(w->fd, &st) == -1 || close(w->fd) == -1) {
        warn_store("cannot finish a temp file");
        w->fd = -1;
        cache_store_abort(w);
        return -1;
    }
    w->fd = -1;
    /* The fan-out folder is made on first use. */
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/%02x", g_dir, (unsigned)(w->hash >> 56));
    if (mkdir(sub, 0755) == -1 && errno != EEXIST) {
        warn_store("cannot make a cache folder");
        cache_store_abort(w);
        return -1;
    }
    if (rename(w->tmp, w->path) == -1) {
        warn_store("cannot rename a temp file");
        cache_store_abort(w);
        return -1;
    }
    index_put(w->hash, (uint64_t)st.st_size, now_s());
    g_warned.store(0);
    free(w);
    return 0;
}

void
cache_store_abort(struct cache_writer *w)
{
    if (w == NULL)
        return;
    if (w->fd != -1)
        close(w->fd);
    unlink(w->tmp);
    free(w);
}

/* Copy len bytes at offset off of fd in to the end of fd out: in the kernel
 * where the file system can, else through a buffer. Returns 0 or -1. */
static int
copy_body(int in, off_t off, int out, uint64_t len)
{
    loff_t from = (loff_t)off;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n = copy_file_range(in, &from, out, NULL, chunk, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == ENOSYS || errno == EXDEV || errno == EINVAL ||
            errno == EOPNOTSUPP))
            break;                              /* not here: copy by hand */
        if (n <= 0)
            return -1;                          /* n == 0: the file shrank */
        len -= (uint64_t)n;
    }
    char buf[65536];
    while (len > 0) {
        ssize_t n = pread(in, buf, len > sizeof buf ? sizeof buf : (size_t)len, (off_t)from);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0 || pibl_write_all(out, buf, (size_t)n) == -1)
            return -1;
        from += n;
        len -= (uint64_t)n;
    }
    return 0;
}

int
cache_update(const struct cache_entry *e, const char *key, size_t key_len, long lifetime,
    long age, const char *head, size_t head_len)
{
    struct cache_writer *w =
        cache_store_begin(key, key_len, e->status, lifetime, age, e->vary, head, head_len);
    if (w == NULL)
        return -1;
    if (copy_body(e->fd, e->body_off, w->fd, e->body_len) == -1) {
        warn_store("cannot copy an entry's body");
        cache_store_abort(w);
        return -1;
    }
    w->body_bytes = e->body_len;
    /* Another store may have replaced the entry while we copied: that one
     * is newer than what we update, and stays. */
    struct stat now_st, old_st;
    if (fstat(e->fd, &old_st) == -1 || stat(w->path, &now_st) == -1 ||
        now_st.st_ino != old_st.st_ino || now_st.st_dev != old_st.st_dev) {
        cache_store_abort(w);
        return -1;
    }
    return cache_store_commit(w);
}

/* ---------------------------------------------------------------- collapsing */

int
cache_lock(const char *key, size_t key_len, int timeout_s)
{
    uint64_t h = hash_key(key, key_len);
    struct timespec deadline;
    int waited = 0;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_s;
    pthread_mutex_lock(&g_fetch_lock);
    for (;;) {
        struct inflight *f;
        for (f = g_inflight; f != NULL && f->hash != h; f = f->next)
            ;
        if (f == NULL)
            break;
        waited = 1;
        if (pthread_cond_timedwait(&g_fetch_done, &g_fetch_lock, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&g_fetch_lock);
            return CACHE_LOCK_TIMEOUT;
        }
    }
    if (waited) {
        pthread_mutex_unlock(&g_fetch_lock);
        return CACHE_LOCK_WAITED;
    }
    struct inflight *f = (struct inflight *)malloc(sizeof *f);
    if (f != NULL) {
        f->hash = h;
        f->next = g_inflight;
        g_inflight = f;
    }
    pthread_mutex_unlock(&g_fetch_lock);
    return f != NULL ? CACHE_LOCK_OWNED : CACHE_LOCK_TIMEOUT;
}

void
cache_unlock(const char *key, size_t key_len)
{
    uint64_t h = hash_key(key, key_len);

    pthread_mutex_lock(&g_fetch_lock);
    for (struct inflight **pp = &g_inflight; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->hash == h) {
            struct inflight *f = *pp;
            *pp = f->next;
            free(f);
            break;
        }
    }
    pthread_cond_broadcast(&g_fetch_done);
    pthread_mutex_unlock(&g_fetch_lock);
}

/* ---------------------------------------------------------------- counters */

static std::atomic<uint64_t> g_hits, g_lookups;

void
cache_note(int status)
{
    if (status == CACHE_BYPASS)
        return;
    g_lookups.fetch_add(1, std::memory_order_relaxed);
    if (status == CACHE_HIT || status == CACHE_STALE)
        g_hits.fetch_add(1, std::memory_order_relaxed);
}

void
cache_get_stats(struct cache_stats *st)
{
    memset(st, 0, sizeof *st);
    st->hits = g_hits.load();
    st->lookups = g_lookups.load();
    if (g_index == NULL)
        return;
    pthread_mutex_lock(&g_index_lock);
    st->entries = g_index->size();
    st->bytes = g_total;
    pthread_mutex_unlock(&g_index_lock);
}
