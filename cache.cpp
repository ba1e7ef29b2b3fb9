/*
 * cache.cpp - the disk cache: key, hashed file names, TTL by mtime.
 * (Placeholder until the cache issue lands: only names the statuses and
 * prepares the folder.)
 */
#include "pibl.h"

#include <errno.h>
#include <sys/stat.h>

static long g_ttl;                 /* seconds; 0 = cache off */

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
cache_init(const char *dir, long ttl)
{
    g_ttl = ttl;
    if (ttl == 0)
        return 0;
    if (mkdir(dir, 0755) == -1 && errno != EEXIST)
        return -1;
    return 0;
}
