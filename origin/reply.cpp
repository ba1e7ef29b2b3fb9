/*
 * origin/reply.cpp - pibl-origin's response heads: reason phrases, the
 * Date, the common head (X-Backend, framing, Connection), interim 1xx
 * answers, small whole answers and error answers.
 * Limits: RESP_HEAD_BYTES per head.
 */
#include "origin.h"

#include <stdio.h>
#include <time.h>

/* ---------------------------------------------------------------- responses */

/* The reason phrase for status, "Status" for codes without one here. */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
    }
}

int http_date(time_t t, char *buf, size_t cap)
{
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL)
        return -1;
    return strftime(buf, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0 ? -1 : 0;
}

int send_head(struct conn *c, int status, const char *extra, long long content_length, int chunked)
{
    const struct request *rq = &c->rq;
    char head[RESP_HEAD_BYTES];
    char date[64];
    char length[64] = "";
    const char *connection = "";

    if (http_date(time(NULL), date, sizeof date) == -1)
        return -1;
    if (content_length >= 0)
        snprintf(length, sizeof length, "Content-Length: %lld\r\n", content_length);
    if (!rq->keep_alive)
        connection = "Connection: close\r\n";
    else if (rq->minor == 0)
        connection = "Connection: keep-alive\r\n";
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: pibl-origin\r\nX-Backend: %s\r\n%s%s%s%s\r\n",
                     status, reason_phrase(status), date, g_cfg.name, extra, length,
                     chunked ? "Transfer-Encoding: chunked\r\n" : "", connection);
    if (n < 0 || (size_t)n >= sizeof head)
        return -1;
    return out_put(c, head, (size_t)n);
}

int send_interim(struct conn *c, int status, const char *extra)
{
    char head[RESP_HEAD_BYTES];

    if (c->rq.minor == 0)
        return 0;
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nX-Backend: %s\r\n%s\r\n",
                     status, reason_phrase(status), g_cfg.name, extra);
    if (n < 0 || (size_t)n >= sizeof head)
        return -1;
    if (out_put(c, head, (size_t)n) == -1)
        return -1;
    return out_flush(c);
}

int send_simple(struct conn *c, int status, const char *extra, const char *body, size_t body_len)
{
    int bodiless = status == 204 || status == 304;

    if (send_head(c, status, extra, bodiless ? -1 : (long long)body_len, 0) == -1)
        return -1;
    if (!bodiless && !c->rq.is_head && out_put(c, body, body_len) == -1)
        return -1;
    return out_flush(c);
}

int send_error(struct conn *c, int status)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, reason_phrase(status));

    if (n < 0 || (size_t)n >= sizeof body)
        return -1;
    return send_simple(c, status, "Content-Type: text/plain; charset=utf-8\r\n", body, (size_t)n);
}
