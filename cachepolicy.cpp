/*
 * cachepolicy.cpp - the HTTP rules of the shared cache (RFC 9111, and
 * RFC 9211 for Cache-Status): which requests may be answered from the
 * cache (GET and HEAD without a body, unless the request's Cache-Control
 * or Pragma says otherwise), which answers may be stored and for how long
 * (status, Cache-Control, Expires, Age, validators, capped by the launch
 * TTL), Vary (its values and variants: vary.cpp), the client's
 * conditionals (a 304 from an entry), revalidation of expired entries with
 * our own conditionals, PURGE from the addresses of purge_allow,
 * stale-if-error, invalidation after unsafe methods, and the collapsing of
 * concurrent misses of one key.
 *
 * It does not touch the files (cache.cpp keeps them) nor choose backends.
 * Refused on purpose: storing answers with no-store, private, Set-Cookie,
 * Authorization without public or s-maxage, "Vary: *", and answers to be
 * revalidated (lifetime 0) that carry no validator.
 * Limits: MAX_CACHE_KEY bytes of key (past it, not cached);
 * cache_lock_timeout of waiting.
 */
#include "cachepolicy.h"
#include "cache.h"
#include "conditional.h"
#include "conn.h"
#include "exchange.h"
#include "freshness.h"
#include "http.h"
#include "httpdate.h"
#include "log.h"
#include "refresh.h"
#include "vary.h"
#include "pibl.h"
#include "sock.h"

#include <stdlib.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

void
cachepolicy_put_fields(struct http_builder *b, const struct exchange *x)
{
    if (x->cache == CACHE_NONE)
        return;
    int from_cache = x->cache == CACHE_HIT || x->cache == CACHE_STALE || x->revalidated;
    if (from_cache) {
        http_puts(b, "Age: ");
        http_put_long(b, x->age);
        http_puts(b, "\r\n");
    }
    http_puts(b, "X-Cache: ");
    http_puts(b, cache_status_name(x->cache));
    http_puts(b, "\r\nCache-Status: " PIBL_NAME);
    if (x->cache == CACHE_HIT || x->cache == CACHE_STALE) {
        http_puts(b, "; hit; ttl=");
        http_put_long(b, x->ttl_left);
        if (x->cache == CACHE_STALE) {
            http_puts(b, "; detail=");
            http_puts(b, x->cs_detail != NULL ? x->cs_detail : "stale-if-error");
        }
        http_puts(b, "\r\n");
        return;
    }
    http_puts(b, "; fwd=");
    http_puts(b, x->cs_fwd ? x->cs_fwd : "miss");
    if (x->revalidated)
        http_puts(b, "; fwd-status=304");
    if (x->stored)
        http_puts(b, "; stored");
    http_puts(b, "\r\n");
}

int
cachepolicy_own_field(const struct http_header *h)
{
    return http_name_is(h->name, h->name_len, "age") ||
        http_name_is(h->name, h->name_len, "x-cache") ||
        http_name_is(h->name, h->name_len, "cache-status");
}

/* Statuses a cache may store without explicit freshness (RFC 9110 15.1). */
static int
heuristically_cacheable(int status)
{
    static const int list[] = { 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501 };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (list[i] == status)
            return 1;
    return 0;
}

/* Final statuses whose meaning RFC 9110 15 defines. */
static int
understood(int status)
{
    return (status >= 200 && status <= 206) || (status >= 300 && status <= 308 && status != 306) ||
        (status >= 400 && status <= 417) || status == 421 || status == 422 || status == 426 ||
        (status >= 500 && status <= 505);
}

/*
 * Decide whether an answer may be stored and for how long (RFC 9111 3 and
 * 4.2, capped by the launch TTL): the freshness lifetime in seconds, with
 * *age the age it came with (RFC 9111 4.2.3: its Age, or the time since its
 * Date when longer; 0 for an Age that cannot be read, which then makes it
 * stale on arrival). A lifetime not above *age
 * means stored but revalidated before each reuse. Returns -1: not stored.
 */
static long
lifetime_of(const struct pibl_config *cfg, const struct http_request *r,
    const struct http_response *resp, long *age)
{
    struct cache_ctl cc;
    const struct http_header *h;

    *age = 0;
    /* 206 is not stored: PIBL keeps whole answers only. */
    if (resp->status < 200 || resp->status == 206 || resp->status == 304)
        return -1;
    freshness_targeted(resp->headers, resp->n_headers, &cc);
    /* must-understand: stored only when PIBL knows what the status means,
     * and then no-store (sent for caches that do not) is ignored. */
    if (cc.must_understand) {
        if (!understood(resp->status))
            return -1;
        cc.no_store = 0;
    }
    if (cc.no_store || cc.is_private ||
        http_find_field(resp->headers, resp->n_headers, "set-cookie"))
        return -1;
    /* RFC 9111 3.5: an answer to a request with credentials is shared
     * only when the origin says so. */
    if (http_find_field(r->headers, r->n_headers, "authorization") && !cc.is_public &&
        cc.s_maxage < 0 && !cc.must_revalidate)
        return -1;

    long ttl = cache_ttl(), lifetime = ttl;
    int is_explicit = 1;
    time_t exp;
    int ex = freshness_expires(resp->headers, resp->n_headers, &exp);
    if (cc.s_maxage >= 0) {
        lifetime = cc.s_maxage;
    } else if (cc.max_age >= 0) {
        lifetime = cc.max_age;
    } else if (ex != EXPIRES_NONE) {
        const struct http_header *d = http_find_field(resp->headers, resp->n_headers, "date");
        time_t date = d ? http_parse_date(d->value, d->value_len) : -1;
        if (date == -1)
            date = time(NULL);
        lifetime = ex == EXPIRES_INVALID || exp <= date ? 0 :
            exp - date > 2147483647 ? 2147483647L : (long)(exp - date);
    } else {
        is_explicit = 0;
    }
    if (!is_explicit && !heuristically_cacheable(resp->status))
        return -1;
    if (!is_explicit && !cfg->cache_heuristic) {
        /* A strict shared cache: 10 % of the time since Last-Modified
         * (RFC 9111 4.2.2), else revalidate every time. */
        lifetime = 0;
        if ((h = http_find_field(resp->headers, resp->n_headers, "last-modified")) != NULL) {
            time_t lm = http_parse_date(h->value, h->value_len);
            const struct http_header *d = http_find_field(resp->headers, resp->n_headers, "date");
            time_t date = d ? http_parse_date(d->value, d->value_len) : -1;
            if (date == -1)
                date = time(NULL);
            if (lm != -1 && lm < date)
                lifetime = (long)((date - lm) / 10 > 2147483647 ? 2147483647 : (date - lm) / 10);
        }
    }
    if (cc.no_cache)
        lifetime = 0;
    if (lifetime > ttl)
        lifetime = ttl;
    long a = freshness_age(resp->headers, resp->n_headers);
    if (a == AGE_INVALID) {
        lifetime = 0;                           /* unknown age: stale on arrival */
    } else {
        /* The age on arrival is the larger of Age and apparent_age, the
         * time since its Date (RFC 9111 4.2.3), less the second a Date's
         * rounding may account for; a Date ahead counts 0. */
        const struct http_header *d = http_find_field(resp->headers, resp->n_headers, "date");
        time_t date = d ? http_parse_date(d->value, d->value_len) : -1, now = time(NULL);
        if (date != -1 && now - date - 1 > a)
            a = now - date - 1 > 2147483647 ? 2147483647L : (long)(now - date - 1);
        *age = a;
    }
    int has_validator = http_find_field(resp->headers, resp->n_headers, "etag") != NULL ||
        http_find_field(resp->headers, resp->n_headers, "last-modified") != NULL;
    if (lifetime <= *age && !has_validator)
        return -1;
    return lifetime;
}

/* Fields a 304 carries from the stored answer (RFC 9110 15.4.5). */
static int
keep_in_304(const struct http_header *h)
{
    static const char *const keep[] = {
        "cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified",
    };
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (http_name_is(h->name, h->name_len, keep[i]))
            return 1;
    return 0;
}

long
cachepolicy_entry_head(struct conn *c, struct exchange *x, struct cache_entry *e,
    uint64_t *body)
{
    struct http_response resp;
    struct http_tokens none;

    memset(&none, 0, sizeof none);
    if (cache_read_head(e, c->uin, c->uin_cap) == -1 ||
        http_parse_response(c->uin, e->head_len, &resp) == -1)
        return -1;
    int not_modified = cond_evaluate(&x->req, &resp, time(NULL) - (time_t)e->age) == COND_NOT_MODIFIED;
    int status = not_modified ? 304 : resp.status;
    uint64_t from = 0, len = e->body_len;
    int range = COND_RANGE_WHOLE;
    if (status == 200 && !x->is_head && http_method_is(x->method, strlen(x->method), "GET"))
        range = cond_range(&x->req, &resp, e->body_len, &from, &len);
    if (range == COND_RANGE_PART)
        status = 206;
    else if (range == COND_RANGE_UNSATISFIABLE)
        status = 416;
    int has_body = !x->is_head && !not_modified && status != 204 && status != 304 && status != 416;
    int ranges_field = 0, has_date = 0;

    x->age = e->age;
    x->ttl_left = e->lifetime - e->age;
    if (pibl_stopping())
        x->keep_alive = 0;
    struct http_builder b = { c->out, c->out_cap, 0, 0 };
    http_put_status(&b, status);
    if (status != resp.status)
        http_puts(&b, http_reason_phrase(status));
    else
        http_put(&b, resp.reason, resp.reason_len);
    http_put(&b, "\r\n", 2);
    for (int i = 0; i < resp.n_headers; i++) {
        const struct http_header *h = &resp.headers[i];
        if (cachepolicy_own_field(h) || freshness_is_own(h) || http_is_hop_by_hop(h, &none) ||
            http_is_lookalike(h->name, h->name_len) ||
            (not_modified && !keep_in_304(h)) ||
            /* a 416 is PIBL's own: nothing that would let a cache keep it */
            (status == 416 && (!keep_in_304(h) || http_name_is(h->name, h->name_len, "cache-control") ||
                http_name_is(h->name, h->name_len, "expires"))) ||
            http_name_is(h->name, h->name_len, "content-length") ||
            ((status == 206 || status == 416) && http_name_is(h->name, h->name_len, "content-range")))
            continue;
        ranges_field |= http_name_is(h->name, h->name_len, "accept-ranges");
        has_date |= http_name_is(h->name, h->name_len, "date");
        http_put_field(&b, h->name, h->name_len, h->value, h->value_len);
    }
    if (!has_date)                              /* an entry stored before PIBL added one */
        http_put_date(&b, time(NULL) - (time_t)e->age);
    if ((status == 200 || status == 206) && !ranges_field)
        http_puts(&b, "Accept-Ranges: bytes\r\n");   /* the cache serves ranges of it */
    if (status == 206 || status == 416) {
        http_puts(&b, "Content-Range: bytes ");
        if (status == 206) {
            http_put_num(&b, (unsigned long long)from);
            http_puts(&b, "-");
            http_put_num(&b, (unsigned long long)(from + len - 1));
        } else {
            http_puts(&b, "*");
        }
        http_puts(&b, "/");
        http_put_num(&b, (unsigned long long)e->body_len);
        http_puts(&b, "\r\n");
    }
    if (status != 204 && status != 304) {
        http_puts(&b, "Content-Length: ");
        http_put_num(&b, (unsigned long long)(status == 416 ? 0 : len));
        http_puts(&b, "\r\n");
    }
    cachepolicy_put_fields(&b, x);
    exchange_put_head_end(&b, x);
    if (b.overflow)
        return -1;
    if (c->cfg->log_headers)
        log_block("response from cache:", c->out, b.len);

    x->status = status;
    x->body_done = 1;
    x->body_from = has_body ? from : 0;
    *body = has_body ? len : 0;
    return (long)b.len;
}

/*
 * Answer from a cache entry: the head from cachepolicy_entry_head(), then
 * the body straight from the file with sendfile(). Blocks (the socket's
 * send timeout bounds it). Returns an enum cachepolicy_served: SERVE_NONE
 * when the entry is unreadable (the caller goes to the origin).
 */
static int
serve(struct conn *c, struct exchange *x, struct cache_entry *e)
{
    uint64_t left;
    long head_len = cachepolicy_entry_head(c, x, e, &left);

    if (head_len == -1)
        return SERVE_NONE;
    /* A small body kept in memory goes with the head in one send; else the
     * head waits (MSG_MORE) for the first bytes sendfile() adds: one
     * segment for a small answer instead of two. */
    struct iovec iov[2] = { { c->out, (size_t)head_len }, { NULL, 0 } };
    if (e->body != NULL) {
        iov[1].iov_base = (void *)(e->body + x->body_from);
        iov[1].iov_len = (size_t)left;
        x->bytes = left;
        left = 0;
    }
    if (sock_writev(c->fd, iov, 2, left > 0 ? MSG_MORE : 0) == -1) {
        x->err = "client went away";
        x->bytes = 0;
        return SERVE_CLIENT_GONE;
    }
    off_t off = e->body_off + (off_t)x->body_from;
    while (left > 0) {
        ssize_t sent = sendfile(c->fd, e->fd, &off, left > (1u << 30) ? (1u << 30) : (size_t)left);
        if (sent == -1 && errno == EINTR)
            continue;
        if (sent <= 0) {
            x->err = sent == 0 ? "cache entry shrank" : "client went away";
            return SERVE_CLIENT_GONE;
        }
        left -= (uint64_t)sent;
        x->bytes += (uint64_t)sent;
    }
    return SERVE_OK;
}

/* 1 when the client address is listed in purge_allow. */
static int
purge_allowed(const struct conn *c)
{
    return sock_ip_listed(c->cfg->purge_allow, c->peer_ip);
}

/* Read the stored validators of an expired entry into x->cond (RFC 9111 4.3.1). */
static void
prepare_revalidation(struct conn *c, struct exchange *x)
{
    struct http_response resp;
    struct http_builder b = { x->cond, sizeof x->cond, 0, 0 };
    const struct http_request *r = &x->req;

    if (http_find_field(r->headers, r->n_headers, "if-none-match") ||
        http_find_field(r->headers, r->n_headers, "if-modified-since") ||
        cache_read_head(&x->stale, c->uin, c->uin_cap) == -1 ||
        http_parse_response(c->uin, x->stale.head_len, &resp) == -1)
        return;
    const struct http_header *etag = http_find_field(resp.headers, resp.n_headers, "etag");
    const struct http_header *lm = http_find_field(resp.headers, resp.n_headers, "last-modified");
    if (etag != NULL)
        http_put_field(&b, "If-None-Match", 13, etag->value, etag->value_len);
    if (lm != NULL)
        http_put_field(&b, "If-Modified-Since", 17, lm->value, lm->value_len);
    x->cond_len = b.overflow ? 0 : b.len;
}

int
cachepolicy_plan(struct exchange *x, const char *host, size_t host_len, const char *path,
    size_t path_len)
{
    const struct http_request *r = &x->req;
    int is_get = http_method_is(r->method, r->method_len, "GET");
    int is_purge = http_method_is(r->method, r->method_len, "PURGE");

    x->cache = CACHE_BYPASS;
    x->cs_fwd = "bypass";
    if (host != NULL)
        x->key_len = cache_key(x->key, sizeof x->key, host, host_len, path, path_len);
    if (host == NULL || x->key_len <= 0) {
        x->key_len = 0;
        return is_purge ? PLAN_PURGE : PLAN_FORWARD;
    }
    if (is_purge)
        return PLAN_PURGE;
    if (!is_get && !x->is_head) {
        /* Every method not defined as safe invalidates, the unknown ones
         * too (RFC 9111 4.4; RFC 9110 9.2.1, WebDAV, QUERY). */
        static const char *const safe[] = { "OPTIONS", "TRACE", "QUERY", "PROPFIND", "REPORT",
            "SEARCH" };
        x->invalidate = 1;
        for (size_t i = 0; i < sizeof safe / sizeof safe[0]; i++)
            if (http_method_is(r->method, r->method_len, safe[i]))
                x->invalidate = 0;
        x->cs_fwd = "method";
        return PLAN_FORWARD;
    }
    if (x->body.kind != HTTP_BODY_NONE)
        return PLAN_FORWARD;

    struct cache_ctl cc;
    freshness_cache_control(r->headers, r->n_headers, "cache-control", &cc);
    const struct http_header *pragma = http_find_field(r->headers, r->n_headers, "pragma");
    if (!http_find_field(r->headers, r->n_headers, "cache-control") && pragma != NULL &&
        http_name_is(pragma->value, pragma->value_len, "no-cache"))
        cc.no_cache = 1;
    /* The client's own limits on what it takes from a cache (RFC 9111
     * 5.2.1): an entry older than max-age, or fresh for less than
     * min-fresh, is revalidated; only-if-cached never reaches a backend. */
    x->req_max_age = cc.max_age;
    x->req_min_fresh = cc.min_fresh;
    x->only_if_cached = cc.only_if_cached;
    x->store_ok = is_get && !cc.no_store;
    if (cc.no_store) {
        x->cs_fwd = "request";                  /* ask the origin, keep nothing */
        return PLAN_FORWARD;
    }
    /* If-Match and If-Unmodified-Since are for the origin, not a cache
     * (RFC 9111 4.3.2): such a request goes there. */
    if (http_find_field(r->headers, r->n_headers, "if-match") ||
        http_find_field(r->headers, r->n_headers, "if-unmodified-since")) {
        x->cs_fwd = "request";
        return PLAN_FORWARD;
    }
    /* no-cache: what is stored is revalidated before use (RFC 9111 5.2.1.4),
     * with our conditionals, not dropped. */
    x->must_ask = cc.no_cache;
    return PLAN_LOOKUP;
}

/* 1 when the request's max-age or min-fresh turns down entry e. */
static int
client_refuses(const struct exchange *x, const struct cache_entry *e)
{
    return (x->req_max_age >= 0 && e->age > x->req_max_age) ||
        (x->req_min_fresh >= 0 && e->lifetime - e->age < x->req_min_fresh);
}

int
cachepolicy_judge(const struct exchange *x, const struct cache_entry *e)
{
    if (!vary_matches(&x->req, e->vary))
        return ENTRY_OTHER_VARIANT;
    return e->fresh && !x->must_ask && !client_refuses(x, e) ? ENTRY_FRESH : ENTRY_STALE;
}

/* Answer a PURGE (the key is in x, or x->key_len is 0). */
static int
purge(struct conn *c, struct exchange *x)
{
    if (x->key_len == 0) {
        exchange_error(c, x, 404, "not in cache", 1);
        return FRONT_DONE_KEEP;
    }
    if (!purge_allowed(c)) {
        exchange_error(c, x, 403, "PURGE not allowed from this address", 1);
        return FRONT_DONE_KEEP;
    }
    int removed = vary_remove_url(x->key, (size_t)x->key_len);
    exchange_error(c, x, removed ? 200 : 404, removed ? "purged" : "not in cache", 1);
    x->err = NULL;
    return FRONT_DONE_KEEP;
}

/*
 * stale-while-revalidate (RFC 5861 3): serve the stale entry x->stale at
 * once when it is inside its window, and have it refreshed in the
 * background by one request per key (the one that gets the key's lock;
 * the others just serve it). Returns an enum cachepolicy_served;
 * SERVE_NONE when the window does not apply (the caller revalidates).
 */
static int
serve_while_revalidating(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len)
{
    const struct http_request *r = &x->req;
    struct http_response resp;
    struct cache_ctl cc;

    /* A client's own conditionals are its business: a normal revalidation. */
    if (http_find_field(r->headers, r->n_headers, "if-none-match") ||
        http_find_field(r->headers, r->n_headers, "if-modified-since") ||
        cache_read_head(&x->stale, c->uin, c->uin_cap) == -1 ||
        http_parse_response(c->uin, x->stale.head_len, &resp) == -1)
        return SERVE_NONE;
    freshness_targeted(resp.headers, resp.n_headers, &cc);
    /* must-revalidate and its kin forbid any stale answer (RFC 9111 4.2.4). */
    if (cc.stale_while_revalidate < 0 || cc.must_revalidate || cc.no_cache || cc.s_maxage >= 0 ||
        x->stale.age - x->stale.lifetime > cc.stale_while_revalidate)
        return SERVE_NONE;
    if (cache_lock(x->key, (size_t)x->key_len, 0) == CACHE_LOCK_OWNED) {
        struct http_tokens ct;
        http_scan_connection(r->headers, r->n_headers, &ct);
        prepare_revalidation(c, x);
        long hl = exchange_upstream_head(c, x, host, host_len, path, path_len, &ct, 0);
        if (hl > 0)
            refresh_start(c->cfg, x->key, (size_t)x->key_len, r, c->out, (size_t)hl);
        else
            cache_unlock(x->key, (size_t)x->key_len);
        x->cond_len = 0;
    }
    x->cache = CACHE_STALE;
    x->cs_detail = "stale-while-revalidate";
    int rc = serve(c, x, &x->stale);
    if (rc == SERVE_NONE)
        x->cache = CACHE_EXPIRED;
    return rc;
}

/* only-if-cached (RFC 9111 5.2.1.7) with nothing fresh to serve: 504, and
 * no backend hears of it. */
static int
only_if_cached(struct conn *c, struct exchange *x)
{
    exchange_error(c, x, 504, "only-if-cached, and no fresh stored answer", 1);
    return FRONT_DONE_KEEP;
}

int
cachepolicy_front(struct conn *c, struct exchange *x, const char *host, size_t host_len,
    const char *path, size_t path_len)
{
    const struct http_request *r = &x->req;
    int is_get = http_method_is(r->method, r->method_len, "GET");
    int plan = cachepolicy_plan(x, host, host_len, path, path_len);

    if (plan == PLAN_PURGE)
        return purge(c, x);
    if (plan == PLAN_FORWARD && !x->only_if_cached)
        return FRONT_FORWARD;
    if (plan == PLAN_FORWARD)
        return only_if_cached(c, x);            /* no-store as well: nothing to answer with */

    int tried_lock = 0;
    for (;;) {
        struct cache_entry e;
        x->cache = CACHE_MISS;
        x->cs_fwd = "uri-miss";
        int found = vary_lookup(x, &e);
        if (found == 2)
            x->cs_fwd = "vary-miss";
        if (found == 1) {
            int verdict = cachepolicy_judge(x, &e);
            if (verdict == ENTRY_OTHER_VARIANT) {
                x->cs_fwd = "vary-miss";
                cache_release(&e);
            } else if (verdict == ENTRY_FRESH) {
                x->cache = CACHE_HIT;
                int rc = serve(c, x, &e);
                cache_release(&e);
                if (rc != SERVE_NONE)
                    return rc == SERVE_OK ? FRONT_DONE_KEEP : FRONT_DONE_CLOSE;
                x->cache = CACHE_MISS;
            } else {
                int asked = x->must_ask || client_refuses(x, &e);
                x->cache = CACHE_EXPIRED;
                x->cs_fwd = asked ? "request" : "stale";
                cache_release(&x->stale);
                x->stale = e;
                int rc = asked || x->only_if_cached || !is_get ? SERVE_NONE :
                    serve_while_revalidating(c, x, host, host_len, path, path_len);
                if (rc != SERVE_NONE)
                    return rc == SERVE_OK ? FRONT_DONE_KEEP : FRONT_DONE_CLOSE;
            }
        }
        if (x->only_if_cached)
            return only_if_cached(c, x);
        /* One fetch per key at a time; the others wait for its entry. */
        if (!is_get || tried_lock)
            break;
        tried_lock = 1;
        int lk = cache_lock(x->key, (size_t)x->key_len, c->cfg->cache_lock_timeout);
        if (lk == CACHE_LOCK_OWNED)
            x->locked = 1;
        if (lk != CACHE_LOCK_WAITED)
            break;
    }
    if (x->stale.fd != -1)
        prepare_revalidation(c, x);
    return FRONT_FORWARD;
}

int
cachepolicy_front_loop(struct conn *c, struct exchange *x, long *head_len, uint64_t *body)
{
    if (cachepolicy_plan(x, c->host, c->host_len, c->path, c->path_len) != PLAN_LOOKUP)
        return LOOP_HAND_OVER;
    int found = vary_lookup(x, &x->hit);
    if (found != 1) {
        if (x->only_if_cached)
            return LOOP_HAND_OVER;              /* its 504 is cachepolicy_front's */
        if (!x->is_head) {
            if (cache_lock(x->key, (size_t)x->key_len, 0) != CACHE_LOCK_OWNED)
                return LOOP_HAND_OVER;          /* taken: wait for it in a thread */
            x->locked = 1;
        }
        x->cache = CACHE_MISS;
        x->cs_fwd = found == 2 ? "vary-miss" : "uri-miss";
        return LOOP_MISS;
    }
    x->cache = CACHE_HIT;
    if (cachepolicy_judge(x, &x->hit) != ENTRY_FRESH ||
        (*head_len = cachepolicy_entry_head(c, x, &x->hit, body)) == -1) {
        cache_release(&x->hit);
        x->cache = CACHE_NONE;
        return LOOP_HAND_OVER;
    }
    return LOOP_HIT;
}

/* 1 for a field name listed in no-cache="..." or private="...". */
static int
omitted(const struct cache_ctl *cc, const struct http_header *h)
{
    for (int i = 0; i < cc->n_omit; i++)
        if (h->name_len == cc->omit[i].len &&
            http_same_ci(h->name, cc->omit[i].name, h->name_len))
            return 1;
    return 0;
}

/*
 * The head an entry keeps for answer resp, into b: hop-by-hop fields,
 * Content-Length (the entry has its own), the fields PIBL sets itself and
 * those named by no-cache="..." or private="..." (RFC 9111 5.2.2.4,
 * 5.2.2.7) are left out.
 */
static void
stored_head(struct http_builder *b, const struct http_response *resp,
    const struct http_tokens *ct)
{
    struct cache_ctl cc;
    int has_date = 0, n = 0;

    freshness_targeted(resp->headers, resp->n_headers, &cc);
    http_put_status(b, resp->status);
    http_put(b, resp->reason, resp->reason_len);
    http_put(b, "\r\n", 2);
    for (int i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        if (http_is_hop_by_hop(h, ct) || http_is_lookalike(h->name, h->name_len) ||
            cachepolicy_own_field(h) || http_name_is(h->name, h->name_len, "content-length") ||
            omitted(&cc, h))
            continue;
        has_date |= http_name_is(h->name, h->name_len, "date");
        http_put_forward(b, h);
        n++;
    }
    if (!has_date && n < MAX_HEADERS)           /* a full head stays readable as it is */
        http_put_date(b, time(NULL));           /* when it was received (RFC 9110 6.6.1) */
    http_put(b, "\r\n", 2);
}

/* Fields a 304 or a HEAD answer never changes in a stored entry (RFC 9111
 * 3.2): hop-by-hop ones, what PIBL sets itself, and those that describe the
 * stored body's bytes, which the update does not carry. */
static int
kept_on_update(const struct http_header *h, const struct http_tokens *ct)
{
    static const char *const body_fields[] = { "content-length", "transfer-encoding",
        "content-encoding", "content-range", "content-md5", "etag" };
    if (http_is_hop_by_hop(h, ct) || http_is_lookalike(h->name, h->name_len) ||
        cachepolicy_own_field(h))
        return 1;
    for (size_t i = 0; i < sizeof body_fields / sizeof body_fields[0]; i++)
        if (http_name_is(h->name, h->name_len, body_fields[i]))
            return 1;
    return 0;
}

/* 1 when answer upd carries a field called like h that it may update. */
static int
replaced_by(const struct http_header *h, const struct http_response *upd,
    const struct http_tokens *ct)
{
    for (int i = 0; i < upd->n_headers; i++)
        if (upd->headers[i].name_len == h->name_len &&
            http_same_ci(upd->headers[i].name, h->name, h->name_len))
            return !kept_on_update(&upd->headers[i], ct);
    return 0;
}

/*
 * The stored answer old with the fields of upd (a 304 or a HEAD answer)
 * put in place of its own (RFC 9111 3.2): into m, whose fields point into
 * both. Returns 0, or -1 when the result has too many fields.
 */
static int
merge_update(const struct http_response *old, const struct http_response *upd,
    const struct http_tokens *ct, struct http_response *m)
{
    m->minor_version = old->minor_version;
    m->status = old->status;
    m->reason = old->reason;
    m->reason_len = old->reason_len;
    /* An update without Date was dated when it came (RFC 9110 6.6.1): the
     * stored Date goes, and stored_head() writes the time of the update. */
    int upd_dated = http_find_field(upd->headers, upd->n_headers, "date") != NULL;
    m->n_headers = 0;
    for (int i = 0; i < old->n_headers; i++) {
        if (replaced_by(&old->headers[i], upd, ct) ||
            (!upd_dated && http_name_is(old->headers[i].name, old->headers[i].name_len, "date")))
            continue;
        m->headers[m->n_headers++] = old->headers[i];
    }
    for (int i = 0; i < upd->n_headers; i++) {
        if (kept_on_update(&upd->headers[i], ct))
            continue;
        if (m->n_headers == MAX_HEADERS)
            return -1;
        m->headers[m->n_headers++] = upd->headers[i];
    }
    return 0;
}

/* 1 when resp says it has a body over cache_max_object: not even begun. */
static int
over_max_object(const struct pibl_config *cfg, const struct http_response *resp)
{
    const struct http_header *cl = http_find_field(resp->headers, resp->n_headers, "content-length");
    long long n = cl != NULL ? http_parse_content_length(cl->value, cl->value_len) : -1;
    return n > cfg->cache_max_object;
}

int
cachepolicy_will_store(const struct conn *c, const struct exchange *x,
    const struct http_response *resp)
{
    long age;
    return x->store_ok && x->key_len > 0 && !over_max_object(c->cfg, resp) &&
        lifetime_of(c->cfg, &x->req, resp, &age) >= 0;
}

struct cache_writer *
cachepolicy_store_answer(const struct pibl_config *cfg, const struct http_request *req,
    const char *key, size_t key_len, const struct http_response *resp,
    const struct http_tokens *ct, char *buf, size_t cap)
{
    char vary[MAX_VARY_BYTES];
    long age;
    long lifetime = lifetime_of(cfg, req, resp, &age);

    if (lifetime < 0 || over_max_object(cfg, resp) || vary_of(req, resp, vary, sizeof vary) == -1)
        return NULL;
    struct http_builder b = { buf, cap, 0, 0 };
    stored_head(&b, resp, ct);
    if (b.overflow)
        return NULL;
    return cache_store_begin(key, key_len, resp->status, lifetime, age, vary, buf, b.len);
}

struct cache_writer *
cachepolicy_store_begin(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct)
{
    if (!x->store_ok || x->key_len == 0)
        return NULL;
    struct cache_writer *cw = cachepolicy_store_answer(c->cfg, &x->req, x->key,
        (size_t)x->key_len, resp, ct, c->out, c->out_cap);
    x->stored = cw != NULL;
    return cw;
}

int
cachepolicy_revalidating(const struct exchange *x)
{
    return x->stale.fd != -1 && x->cond_len > 0;
}

int
cachepolicy_update(const struct pibl_config *cfg, const struct http_request *req,
    const char *key, size_t key_len, struct cache_entry *e, const struct http_response *upd,
    const struct http_tokens *ct, char *buf, size_t cap)
{
    struct http_response old, merged;
    char *head = (char *)malloc(e->head_len);

    if (head == NULL || cache_read_head(e, head, e->head_len) == -1 ||
        http_parse_response(head, e->head_len, &old) == -1) {
        free(head);
        return -1;
    }
    int rc = 0;
    if (merge_update(&old, upd, ct, &merged) == 0) {
        long age;
        long lifetime = lifetime_of(cfg, req, &merged, &age);
        struct http_builder b = { buf, cap, 0, 0 };
        stored_head(&b, &merged, ct);
        if (lifetime < 0)
            cache_remove(key, key_len);
        else if (!b.overflow && cache_update(e, key, key_len, lifetime, age, buf, b.len) == 0)
            rc = 1;
    }
    free(head);
    return rc;
}

/* 1 when field name is in both heads with other values. */
static int
differs(const struct http_response *a, const struct http_response *b, const char *name)
{
    const struct http_header *x = http_find_field(a->headers, a->n_headers, name);
    const struct http_header *y = http_find_field(b->headers, b->n_headers, name);
    return x != NULL && y != NULL &&
        (x->value_len != y->value_len || memcmp(x->value, y->value, x->value_len) != 0);
}

int
cachepolicy_head_answered(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct)
{
    struct cache_entry own, *e = &x->stale;
    struct http_response stored;
    int updated = 0;

    if (!x->is_head || resp->status != 200 || x->key_len == 0)
        return SERVE_NONE;
    own.fd = -1;
    own.slot = -1;
    if (e->fd == -1) {
        if (cache_lookup(x->key, (size_t)x->key_len, &own) != 1)
            return SERVE_NONE;
        e = &own;
    }
    char *head = (char *)malloc(e->head_len);
    if (head != NULL && vary_matches(&x->req, e->vary) &&
        cache_read_head(e, head, e->head_len) == 0 &&
        http_parse_response(head, e->head_len, &stored) == 0) {
        /* Another validator or length: the stored answer is not the one the
         * origin has now. */
        const struct http_header *cl = http_find_field(resp->headers, resp->n_headers,
            "content-length");
        long long len = cl != NULL ? http_parse_content_length(cl->value, cl->value_len) : -1;
        if (differs(&stored, resp, "etag") || differs(&stored, resp, "last-modified") ||
            (len >= 0 && (uint64_t)len != e->body_len))
            cache_remove(x->key, (size_t)x->key_len);
        else
            updated = cachepolicy_update(c->cfg, &x->req, x->key, (size_t)x->key_len, e, resp,
                ct, c->out, c->out_cap) == 1;
    }
    free(head);
    cache_release(&own);
    if (!updated)
        return SERVE_NONE;
    /* The answer is the updated entry's head: the stored fields the HEAD
     * answer did not repeat are part of it. */
    struct cache_entry now;
    if (cache_lookup(x->key, (size_t)x->key_len, &now) != 1)
        return SERVE_NONE;
    int rc = serve(c, x, &now);
    cache_release(&now);
    return rc;
}

int
cachepolicy_refresh(struct conn *c, struct exchange *x, const struct http_response *resp,
    const struct http_tokens *ct)
{
    x->revalidated = 1;
    if (cachepolicy_update(c->cfg, &x->req, x->key, (size_t)x->key_len, &x->stale, resp, ct,
        c->out, c->out_cap) == 1) {
        struct cache_entry e;
        if (cache_lookup(x->key, (size_t)x->key_len, &e) == 1) {
            if (cachepolicy_judge(x, &e) != ENTRY_OTHER_VARIANT) {
                int rc = serve(c, x, &e);
                cache_release(&e);
                return rc;
            }
            cache_release(&e);
        }
    }
    /* Not rewritten: the old entry is fresh again as it was. */
    cache_touch(&x->stale);
    x->stale.age = x->stale.initial_age;
    return serve(c, x, &x->stale);
}

/* Whether x's expired entry may stand in for an error (its head read into
 * buf): SERVE_OK yes, SERVE_NONE no (none, unreadable, past its window),
 * SERVE_REFUSED when its fields forbid any stale answer. */
static int
stale_verdict(struct conn *c, struct exchange *x, char *buf, size_t cap)
{
    struct http_response resp;
    struct cache_ctl cc;

    if (x->stale.fd == -1 || cache_read_head(&x->stale, buf, cap) == -1 ||
        http_parse_response(buf, x->stale.head_len, &resp) == -1)
        return SERVE_NONE;
    /* must-revalidate, proxy-revalidate, s-maxage and no-cache forbid a
     * stale answer whatever the config says (RFC 9111 4.2.4, 5.2.2). */
    freshness_targeted(resp.headers, resp.n_headers, &cc);
    if (cc.must_revalidate || cc.s_maxage >= 0 || cc.no_cache)
        return SERVE_REFUSED;
    long window = cc.stale_if_error >= 0 ? cc.stale_if_error : c->cfg->cache_stale_if_error;
    return x->stale.age - x->stale.lifetime > window ? SERVE_NONE : SERVE_OK;
}

static int
serve_stale(struct conn *c, struct exchange *x)
{
    x->cache = CACHE_STALE;
    x->cs_detail = "stale-if-error";
    int rc = serve(c, x, &x->stale);
    if (rc == SERVE_NONE)
        x->cache = CACHE_EXPIRED;
    return rc;
}

int
cachepolicy_stale_if_error(struct conn *c, struct exchange *x)
{
    int v = stale_verdict(c, x, c->uin, c->uin_cap);
    return v == SERVE_OK ? serve_stale(c, x) : v;
}

int
cachepolicy_stale_on_5xx(struct conn *c, struct exchange *x, int status)
{
    /* A client that asked for validation (no-cache) gets the backend's own answer. */
    if (x->stale.fd == -1 || x->must_ask ||
        (status != 500 && status != 502 && status != 503 && status != 504))
        return SERVE_NONE;
    /* c->uin holds the backend's answer, relayed if the entry may not serve. */
    char *head = (char *)malloc(x->stale.head_len);
    int v = head != NULL ? stale_verdict(c, x, head, x->stale.head_len) : SERVE_NONE;
    free(head);
    return v == SERVE_OK ? serve_stale(c, x) : SERVE_NONE;
}

/*
 * Remove the entry a Location or Content-Location value names, when it is
 * on the same host as x's key "http://host/target" (RFC 9111 4.4): an
 * absolute http URI with that host, an absolute path, or a path relative
 * to the target's folder.
 */
static void
invalidate_ref(const struct exchange *x, const char *v, size_t len)
{
    const char *host = x->key + 7;
    const char *target = (const char *)memchr(host, '/', (size_t)x->key_len - 7);
    char path[MAX_CACHE_KEY], key[MAX_CACHE_KEY];
    size_t host_len, pl = 0;

    if (target == NULL || len == 0)
        return;
    host_len = (size_t)(target - host);
    const char *hash = (const char *)memchr(v, '#', len);
    if (hash != NULL)
        len = (size_t)(hash - v);
    if (len > 7 && http_same_ci(v, "http://", 7)) {
        const char *slash = (const char *)memchr(v + 7, '/', len - 7);
        size_t hl = slash ? (size_t)(slash - v - 7) : len - 7;
        size_t same = hl;                       /* the key's host has no ":80" (cache_key) */
        if (same >= 3 && memcmp(v + 7 + same - 3, ":80", 3) == 0)
            same -= 3;
        else if (same >= 1 && v[7 + same - 1] == ':')
            same -= 1;
        if (same != host_len || !http_same_ci(v + 7, host, same))
            return;                             /* another host: not ours to drop */
        v = slash ? slash : "/";
        len = slash ? len - 7 - hl : 1;
    } else if (memchr(v, ':', len) != NULL && (memchr(v, '/', len) == NULL ||
        (const char *)memchr(v, ':', len) < (const char *)memchr(v, '/', len))) {
        return;                                 /* another scheme */
    } else if (v[0] != '/') {
        const char *q = (const char *)memchr(target, '?', (size_t)(x->key + x->key_len - target));
        const char *end = q ? q : x->key + x->key_len;
        while (end > target && end[-1] != '/')
            end--;
        pl = (size_t)(end - target);            /* the target's folder, with its '/' */
        if (pl >= sizeof path)
            return;
        memcpy(path, target, pl);
    }
    if (pl + len >= sizeof path)
        return;
    memcpy(path + pl, v, len);
    int kl = cache_key(key, sizeof key, host, host_len, path, pl + len);
    if (kl > 0)
        vary_remove_url(key, (size_t)kl);
}

void
cachepolicy_answered(struct exchange *x, const struct http_response *resp)
{
    if (!x->invalidate || x->key_len <= 7 || resp->status < 200 || resp->status >= 400)
        return;
    vary_remove_url(x->key, (size_t)x->key_len);
    for (int i = 0; i < resp->n_headers; i++) {
        const struct http_header *h = &resp->headers[i];
        if (http_name_is(h->name, h->name_len, "location") ||
            http_name_is(h->name, h->name_len, "content-location"))
            invalidate_ref(x, h->value, h->value_len);
    }
}

void
cachepolicy_unlock(struct exchange *x)
{
    if (x->locked)
        cache_unlock(x->key, (size_t)x->key_len);
    x->locked = 0;
}

void
cachepolicy_end(struct exchange *x)
{
    cachepolicy_unlock(x);
    if (x->invalidate && x->key_len > 0 && x->status >= 200 && x->status < 400)
        vary_remove_url(x->key, (size_t)x->key_len);
    x->invalidate = 0;
    cache_release(&x->stale);
    cache_release(&x->hit);
}
