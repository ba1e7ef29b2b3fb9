/*
 * origin/files.cpp - static files under ROOT: GET and HEAD, index.html for
 * folders, Content-Type by extension, Last-Modified and ETag with 304 on
 * If-None-Match / If-Modified-Since, bodies with sendfile. Refuses ".."
 * segments (403) and encoded NUL (400); no ranges, no listings.
 * Limits: MAX_PATH_BYTES per decoded path.
 */
#include "origin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- static files */

/* The Content-Type for a file name, by extension. */
static const char *content_type(const char *path)
{
    static const struct { const char *ext; const char *type; } types[] = {
        { ".html", "text/html; charset=utf-8" },
        { ".htm", "text/html; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" },
        { ".js", "text/javascript; charset=utf-8" },
        { ".json", "application/json" },
        { ".txt", "text/plain; charset=utf-8" },
        { ".xml", "application/xml" },
        { ".svg", "image/svg+xml" },
        { ".png", "image/png" },
        { ".jpg", "image/jpeg" },
        { ".jpeg", "image/jpeg" },
        { ".gif", "image/gif" },
        { ".webp", "image/webp" },
        { ".ico", "image/x-icon" },
        { ".pdf", "application/pdf" },
        { ".wasm", "application/wasm" },
    };
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');

    if (dot != NULL && (slash == NULL || dot > slash))
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcasecmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* 1 if the decoded path has a ".." segment, else 0. */
static int has_dotdot(const char *path)
{
    for (const char *p = path; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == path || p[-1] == '/') && (p[2] == '\0' || p[2] == '/'))
            return 1;
    return 0;
}

int etag_matches(struct str_view list, const char *etag)
{
    struct str_view tag = { etag, strlen(etag) };

    if (tag.len > 2 && tag.ptr[0] == 'W' && tag.ptr[1] == '/') {
        tag.ptr += 2;
        tag.len -= 2;
    }
    while (list.len > 0) {
        const char *comma = (const char *)memchr(list.ptr, ',', list.len);
        size_t len = comma != NULL ? (size_t)(comma - list.ptr) : list.len;
        struct str_view item = { list.ptr, len };
        item = view_trim(item);
        if (item.len > 2 && item.ptr[0] == 'W' && item.ptr[1] == '/') {
            item.ptr += 2;
            item.len -= 2;
        }
        if (view_eq(item, "*") || (item.len == tag.len && memcmp(item.ptr, tag.ptr, tag.len) == 0))
            return 1;
        list.ptr += comma != NULL ? len + 1 : len;
        list.len -= comma != NULL ? len + 1 : len;
    }
    return 0;
}

int not_modified(const struct request *rq, const char *etag, time_t mtime)
{
    struct str_view inm = header_get(rq, "if-none-match");
    struct str_view ims = header_get(rq, "if-modified-since");
    char buf[64];
    struct tm tm;

    if (inm.ptr != NULL)
        return etag_matches(inm, etag);
    if (ims.ptr == NULL || ims.len >= sizeof buf)
        return 0;
    memcpy(buf, ims.ptr, ims.len);
    buf[ims.len] = '\0';
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return 0;
    return timegm(&tm) >= mtime;
}

/*
 * Send size bytes of the open file fd to the client with sendfile(),
 * falling back to read()/send() through c->io when sendfile is not
 * supported. Returns 0, or -1 (the connection must close: the promised
 * Content-Length cannot be kept).
 */
static int send_file(struct conn *c, int fd, off_t size)
{
    off_t offset = 0;

    while (offset < size) {
        size_t want = size - offset > (1 << 30) ? (size_t)1 << 30 : (size_t)(size - offset);
        ssize_t n = sendfile(c->fd, fd, &offset, want);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EINVAL || errno == ENOSYS) && offset == 0)
            break;
        if (n <= 0)
            return -1;   /* error, timeout, or the file shrank */
    }
    while (offset < size) {
        size_t want = size - offset > (off_t)sizeof c->io ? sizeof c->io : (size_t)(size - offset);
        ssize_t n = pread(fd, c->io, want, offset);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0 || send_all(c->fd, c->io, (size_t)n) == -1)
            return -1;
        offset += n;
    }
    return 0;
}

/*
 * Open ROOT + path for reading, using index.html for directories. Returns
 * an fd with *st filled, or -1 with *status set to 404, 403, 414 or 500.
 */
static int open_static(const char *path, struct stat *st, char *fs_path, size_t cap, int *status)
{
    size_t len = strlen(path);
    const char *index = len > 0 && path[len - 1] == '/' ? "index.html" : "";

    for (int tries = 0; tries < 2; tries++) {
        int n = snprintf(fs_path, cap, "%s%s%s", g_cfg.root, path, index);
        if (n < 0 || (size_t)n >= cap) {
            *status = 414;
            return -1;
        }
        int fd = open(fs_path, O_RDONLY | O_CLOEXEC);
        if (fd == -1) {
            *status = errno == ENOENT || errno == ENOTDIR ? 404 : errno == EACCES ? 403 : 500;
            return -1;
        }
        if (fstat(fd, st) == 0 && S_ISREG(st->st_mode))
            return fd;
        close(fd);
        if (!S_ISDIR(st->st_mode) || index[0] != '\0')
            break;
        index = "/index.html";
    }
    *status = 404;
    return -1;
}

int serve_static(struct conn *c)
{
    struct request *rq = &c->rq;
    char path[MAX_PATH_BYTES];
    char fs_path[MAX_PATH_BYTES];
    char extra[EXTRA_HEAD_BYTES];
    char etag[64];
    char modified[64];
    struct stat st;
    int status;

    if (!view_eq(rq->method, "GET") && !rq->is_head)
        return send_simple(c, 405, "Allow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\n",
                           "405 Method Not Allowed\n", sizeof "405 Method Not Allowed\n" - 1);
    if (url_decode(rq->path, path, sizeof path, 0) == -1)
        return send_error(c, 400);
    if (has_dotdot(path))
        return send_error(c, 403);
    int fd = open_static(path, &st, fs_path, sizeof fs_path, &status);
    if (fd == -1)
        return send_error(c, status);
    snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtime);
    if (http_date(st.st_mtime, modified, sizeof modified) == -1)
        modified[0] = '\0';
    int n = snprintf(extra, sizeof extra, "Content-Type: %s\r\nLast-Modified: %s\r\nETag: %s\r\n",
                     content_type(fs_path), modified, etag);
    int rc = -1;
    if (n < 0 || (size_t)n >= sizeof extra)
        goto done;
    if (not_modified(rq, etag, st.st_mtime)) {
        rc = send_simple(c, 304, extra, "", 0);
        goto done;
    }
    if (send_head(c, 200, extra, (long long)st.st_size, 0) == -1 || out_flush(c) == -1)
        goto done;
    rc = rq->is_head ? 0 : send_file(c, fd, st.st_size);
done:
    close(fd);
    return rc;
}
