/*
 * refresh.cpp - background refreshes for stale-while-revalidate (RFC 5861
 * 3): a detached thread per refresh sends one conditional request to a
 * backend chosen by round robin, reads the answer head and, for a 304,
 * rewrites the entry with the new fields (cachepolicy_update) or, for a
 * storable answer, stores it whole in its place (cachepolicy_store_answer,
 * then rename); nothing else changes what is stored. The thread owns the
 * key's collapsing lock, so concurrent clients neither refresh again nor
 * wait: they keep getting the stale entry until it is replaced.
 *
 * Limits: REFRESH_HEAD_BYTES of answer head, MAX_REFRESHES at once (past
 * it, no refresh starts and the entry is refreshed by the next request
 * after its window); backend_timeout on every read, connect_timeout.
 */
#include "refresh.h"
#include "cache.h"
#include "cachepolicy.h"
#include "http.h"
#include "log.h"
#include "pibl.h"
#include "rr.h"
#include "sock.h"
#include "upstream.h"

#include <atomic>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REFRESH_HEAD_BYTES  65536      /* answer head, and the body's read buffer */
#define MAX_REFRESHES       64         /* refresh threads at once */

static std::atomic<int> g_running;

/* One refresh: the request to send, the client request it stands for. */
struct refresh_job {
    const struct pibl_config *cfg;
    char *key;                     /* NUL-terminated */
    size_t key_len;
    char *head;                    /* request head for the backend */
    size_t head_len;
    char *req_text;                /* "GET target HTTP/1.1" + the client's fields */
    size_t req_len;
};

static void
job_free(struct refresh_job *j)
{
    free(j->key);
    free(j->head);
    free(j->req_text);
    free(j);
}

/* Read an answer head from fd into buf. Returns its length with *got the
 * bytes read (head and the body's first ones), or -1. */
static long
read_head(int fd, char *buf, size_t cap, size_t *got)
{
    size_t scan = 0;

    *got = 0;
    for (;;) {
        long h = http_find_head_end(buf, *got, &scan);
        if (h >= 0)
            return h;
        if (h == -1 || *got == cap)
            return -1;
        ssize_t n = recv(fd, buf + *got, cap - *got, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        *got += (size_t)n;
    }
}

/* The answer whose head is buf[0..head_len) (got bytes read) changes the
 * entry. Returns NULL when done, or why not. */
static const char *
apply_answer(struct refresh_job *j, int fd, const struct http_request *req, char *buf,
    size_t got, long head_len, char *scratch)
{
    struct http_response resp;
    struct http_body bi;
    struct http_tokens ct;

    if (http_parse_response(buf, (size_t)head_len, &resp) == -1 ||
        http_framing(0, &resp, &bi) == -1)
        return "invalid answer";
    http_scan_connection(resp.headers, resp.n_headers, &ct);
    if (resp.status == 304) {
        struct cache_entry e;
        if (cache_lookup(j->key, j->key_len, &e) != 1)
            return NULL;                        /* purged meanwhile */
        cachepolicy_update(j->cfg, req, j->key, j->key_len, &e, &resp, &ct, scratch,
            REFRESH_HEAD_BYTES);
        cache_release(&e);
        return NULL;
    }
    if (resp.status < 200)
        return "interim answer";
    struct cache_writer *w = cachepolicy_store_answer(j->cfg, req, j->key, j->key_len, &resp,
        &ct, scratch, REFRESH_HEAD_BYTES);
    if (w == NULL)
        return NULL;                            /* not storable: the stale entry stays */
    struct http_source src = { fd, buf, REFRESH_HEAD_BYTES, (size_t)head_len,
        got - (size_t)head_len, 0, 0, 0, 0 };
    for (;;) {
        const char *data;
        long n = http_body_read(&src, &bi, scratch, REFRESH_HEAD_BYTES, &data);
        if (n == 0)
            break;
        if (n < 0) {
            cache_store_abort(w);
            return "answer cut";
        }
        if (cache_store_write(w, data, (size_t)n) == -1)
            return NULL;                        /* too big, disk full: not stored */
    }
    cache_store_commit(w);
    return NULL;
}

static void *
refresh_main(void *arg)
{
    struct refresh_job *j = (struct refresh_job *)arg;
    struct http_request req;
    char *buf = (char *)malloc(2 * REFRESH_HEAD_BYTES);
    const char *why = "out of memory";
    int b = -1, fd = -1;
    int64_t t0 = pibl_now_us();

    if (buf == NULL)
        goto done;
    why = "no backend available";
    if (http_parse_request(j->req_text, j->req_len, j->req_len, &req) != 0 ||
        (b = rr_next(0)) < 0)
        goto done;
    why = "cannot connect";
    if ((fd = upstream_open(j->cfg, b)) == -1)
        goto done;
    why = "cannot send";
    if (sock_write_all(fd, j->head, j->head_len) == 0) {
        size_t got;
        long h = read_head(fd, buf, REFRESH_HEAD_BYTES, &got);
        why = h < 0 ? "no answer" :
            apply_answer(j, fd, &req, buf, got, h, buf + REFRESH_HEAD_BYTES);
    }
done:
    if (b >= 0)
        rr_record(b, why == NULL, pibl_now_us() - t0, why);
    if (why != NULL)
        log_line("pibl: warning: cache: background refresh of %s failed: %s", j->key, why);
    if (fd != -1)
        close(fd);
    free(buf);
    cache_unlock(j->key, j->key_len);
    job_free(j);
    g_running.fetch_sub(1);
    return NULL;
}

/* A request head holding the client's fields, for the stored entry's Vary
 * values and Authorization, into j->req_text. Returns 0 or -1. */
static int
copy_request(struct refresh_job *j, const struct http_request *req)
{
    size_t cap = 64 + req->target_len;
    for (int i = 0; i < req->n_headers; i++)
        cap += req->headers[i].name_len + req->headers[i].value_len + 4;
    j->req_text = (char *)malloc(cap);
    if (j->req_text == NULL)
        return -1;
    struct http_builder b = { j->req_text, cap, 0, 0 };
    http_puts(&b, "GET ");
    http_put(&b, req->target, req->target_len);
    http_puts(&b, " HTTP/1.1\r\n");
    for (int i = 0; i < req->n_headers; i++)
        http_put_field(&b, req->headers[i].name, req->headers[i].name_len,
            req->headers[i].value, req->headers[i].value_len);
    http_puts(&b, "\r\n");
    j->req_len = b.len;
    return b.overflow ? -1 : 0;
}

int
refresh_start(const struct pibl_config *cfg, const char *key, size_t key_len,
    const struct http_request *req, const char *head, size_t head_len)
{
    struct refresh_job *j = NULL;

    if (g_running.fetch_add(1) >= MAX_REFRESHES)
        goto fail;
    j = (struct refresh_job *)calloc(1, sizeof *j);
    if (j == NULL)
        goto fail;
    j->cfg = cfg;
    j->key = (char *)malloc(key_len + 1);
    j->head = (char *)malloc(head_len);
    if (j->key == NULL || j->head == NULL || copy_request(j, req) == -1)
        goto fail;
    memcpy(j->key, key, key_len);
    j->key[key_len] = '\0';
    j->key_len = key_len;
    memcpy(j->head, head, head_len);
    j->head_len = head_len;
    if (pibl_spawn(refresh_main, j) == 0)
        return 0;
fail:
    if (j != NULL)
        job_free(j);
    g_running.fetch_sub(1);
    cache_unlock(key, key_len);
    return -1;
}

int
refresh_running(void)
{
    return g_running.load();
}
