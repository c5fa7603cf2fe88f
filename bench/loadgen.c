/*
 * loadgen.c -- the request/reply load generator of pollchat's benchmark suite.
 *
 * Compiled at bench time with the machine's gcc (see bench/loadgen.py), so
 * that the client is cheap enough for the *server* to be what is measured.
 * It knows no protocol: it plays a script written by the harness
 * (bench/scripts.py: ping-pong lines, the kv protocol, HTTP keep-alive...).
 * bench/clients.py has a Python twin with the same command line and output,
 * used when gcc is missing.
 *
 *   loadgen run --script FILE --port P [--host 127.0.0.1] [--conns 1]
 *               [--idle 0] [--warmup 0.5] [--duration 2] [--ops 0]
 *               [--timeout 60] [--batch 500] [--sync]
 *
 * 1. Opens --idle connections, in batches of --batch; each does the script's
 *    hello exchange (so the server has accepted and registered it), then
 *    stays open and silent.
 * 2. Opens --conns active connections, each doing the hello exchange.
 * 3. With --sync, prints the "ready" event and waits for a line on stdin
 *    (the harness samples the server meanwhile).
 * 4. Every active connection plays the script's cycle, one exchange at a
 *    time: write the request bytes, read until exactly the expected reply
 *    has arrived (any other byte is an error), go on with the next.  Ops
 *    (requests) and round trips are counted for --duration seconds after
 *    --warmup; with --ops N, from the start until N ops are done instead.
 *
 * Output: one JSON object per line on stdout ("event": ready, start, end,
 * result).  Every loop is bounded in time: a phase that makes no progress
 * for --timeout seconds ends the run with an error result.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define RECV_SIZE 65536
#define MAX_EXCHANGE (1L << 24)
#define MAGIC "pollchat-loadgen-script 1\n"

typedef struct {
    const char *host;
    int port;
    int conns;
    int idle;
    double warmup;
    double duration;
    long ops;
    double timeout;
    int batch;
    int sync;
    const char *script;
} options_t;

typedef struct {
    const char *request;
    long request_len;
    const char *reply;
    long reply_len;
    long ops;
} exchange_t;

typedef struct {
    exchange_t hello;
    exchange_t *cycle;
    int length;
} script_t;

enum { CONNECTING, BUSY, DONE };

typedef struct {
    int fd;
    int state;
    uint32_t events;        /* what epoll watches for this connection */
    const exchange_t *ex;   /* the exchange in flight */
    long sent;              /* bytes of its request written so far */
    long got;               /* bytes of its reply received so far */
    int next;               /* index of the next exchange of the cycle */
} conn_t;

static char error_text[512];

/* Record the first error; later ones are consequences of it. */
static int fail(const char *fmt, ...)
{
    if (error_text[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error_text, sizeof error_text, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void emit(const char *event)
{
    printf("{\"event\": \"%s\"}\n", event);
    fflush(stdout);
}

static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static double parse_double(const char *text, const char *name)
{
    char *end;
    double value = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || value < 0) {
        fprintf(stderr, "loadgen: bad value for %s: %s\n", name, text);
        exit(2);
    }
    return value;
}

static void parse_options(int argc, char **argv, options_t *opt)
{
    *opt = (options_t){"127.0.0.1", 0, 1, 0, 0.5, 2.0, 0, 60.0, 500, 0, NULL};
    if (argc < 2 || strcmp(argv[1], "run") != 0) {
        fprintf(stderr, "usage: loadgen run --script FILE --port P [options]\n");
        exit(2);
    }
    for (int i = 2; i < argc; i++) {
        const char *key = argv[i];
        if (strcmp(key, "--sync") == 0) {
            opt->sync = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loadgen: %s needs a value\n", key);
            exit(2);
        }
        const char *val = argv[++i];
        if (strcmp(key, "--host") == 0) opt->host = val;
        else if (strcmp(key, "--script") == 0) opt->script = val;
        else if (strcmp(key, "--port") == 0) opt->port = (int)parse_double(val, key);
        else if (strcmp(key, "--conns") == 0) opt->conns = (int)parse_double(val, key);
        else if (strcmp(key, "--idle") == 0) opt->idle = (int)parse_double(val, key);
        else if (strcmp(key, "--warmup") == 0) opt->warmup = parse_double(val, key);
        else if (strcmp(key, "--duration") == 0) opt->duration = parse_double(val, key);
        else if (strcmp(key, "--ops") == 0) opt->ops = (long)parse_double(val, key);
        else if (strcmp(key, "--timeout") == 0) opt->timeout = parse_double(val, key);
        else if (strcmp(key, "--batch") == 0) opt->batch = (int)parse_double(val, key);
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", key);
            exit(2);
        }
    }
    if (opt->port <= 0 || opt->script == NULL || opt->batch < 1) {
        fprintf(stderr, "loadgen: need --port, --script and --batch >= 1\n");
        exit(2);
    }
    if (opt->ops > 0)
        opt->warmup = 0; /* a fixed amount of work is counted from the start */
}

/* -- the script ---------------------------------------------------------- */

static int parse_exchange(const char **p, const char *end, exchange_t *ex)
{
    char *after;
    long lens[3];
    for (int k = 0; k < 3; k++) {
        lens[k] = strtol(*p, &after, 10);
        if (after == *p || lens[k] < 0 || lens[k] > MAX_EXCHANGE)
            return fail("bad exchange header in the script");
        *p = after;
    }
    if (**p != '\n')
        return fail("bad exchange header in the script");
    (*p)++;
    if (end - *p < lens[0] + lens[1])
        return fail("truncated script");
    *ex = (exchange_t){*p, lens[0], *p + lens[0], lens[1], lens[2]};
    if (ex->reply_len == 0)
        return fail("an exchange of the script expects no reply");
    *p += lens[0] + lens[1];
    return 0;
}

/* Load the script file (kept in memory for the whole run). */
static int load_script(const char *path, script_t *script)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail("cannot open script %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = size > 0 ? malloc((size_t)size) : NULL;
    int ok = data != NULL && fread(data, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!ok)
        return fail("cannot read script %s", path);
    const char *p = data, *end = data + size;
    size_t magic = strlen(MAGIC);
    if ((size_t)size < magic || memcmp(p, MAGIC, magic) != 0)
        return fail("%s is not a load generator script", path);
    p += magic;
    char *after;
    long count = strtol(p, &after, 10);
    if (after == p || *after != '\n' || count < 2 || count > 1000000)
        return fail("bad exchange count in %s", path);
    p = after + 1;
    script->length = (int)count - 1;
    script->cycle = calloc((size_t)script->length, sizeof *script->cycle);
    if (script->cycle == NULL)
        return fail("out of memory");
    if (parse_exchange(&p, end, &script->hello) < 0)
        return -1;
    for (int i = 0; i < script->length; i++)
        if (parse_exchange(&p, end, &script->cycle[i]) < 0)
            return -1;
    return 0;
}

/* -- connections --------------------------------------------------------- */

static int new_socket(const options_t *opt, struct sockaddr_in *addr)
{
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((unsigned short)opt->port);
    if (inet_pton(AF_INET, opt->host, &addr->sin_addr) != 1)
        return fail("bad host %s", opt->host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail("socket(): %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int watch(int ep, conn_t *c, unsigned index, uint32_t events)
{
    if (c->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.u32 = index};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        return fail("epoll_ctl(MOD): %s", strerror(errno));
    c->events = events;
    return 0;
}

/* Start a non-blocking connect; the socket is registered for EPOLLOUT. */
static int start_connect(const options_t *opt, int ep, conn_t *c, unsigned index)
{
    struct sockaddr_in addr;
    c->fd = new_socket(opt, &addr);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        return fail("connect(): %s", strerror(errno));
    c->state = CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = index};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return fail("epoll_ctl(ADD): %s", strerror(errno));
    return 0;
}

/* Write what is left of the request; watch for EPOLLOUT only while some is. */
static int flush(int ep, conn_t *c, unsigned index, const char *what)
{
    const exchange_t *ex = c->ex;
    while (c->sent < ex->request_len) {
        ssize_t n = send(c->fd, ex->request + c->sent, (size_t)(ex->request_len - c->sent),
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return fail("send on %s connection: %s", what, n < 0 ? strerror(errno) : "0 bytes");
        }
    }
    return watch(ep, c, index, EPOLLIN | (c->sent < ex->request_len ? EPOLLOUT : 0));
}

static int start_exchange(int ep, conn_t *c, unsigned index, const exchange_t *ex,
                          const char *what)
{
    c->ex = ex;
    c->sent = 0;
    c->got = 0;
    c->state = BUSY;
    return flush(ep, c, index, what);
}

/*
 * Read what is there and check it against the expected reply.  Returns 1
 * when the reply is complete, 0 when more is to come, -1 on error.  Stops
 * at the complete reply: nothing can follow it before the next request,
 * and a recv() that would only say EAGAIN is a third of the client's
 * system calls (epoll is level-triggered: anything left is reported again).
 */
static int read_reply(conn_t *c, const char *what)
{
    static char buf[RECV_SIZE];
    const exchange_t *ex = c->ex;
    for (;;) {
        long want = ex->reply_len - c->got;
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (n > want || memcmp(buf, ex->reply + c->got, (size_t)n) != 0) {
                char shown[81];
                int k;
                for (k = 0; k < n && k < 80; k++)
                    shown[k] = (buf[k] >= 0x20 && buf[k] < 0x7f) ? buf[k] : '.';
                shown[k] = '\0';
                return fail("unexpected reply on %s connection at byte %ld of %ld: \"%s\"",
                            what, c->got, ex->reply_len, shown);
            }
            c->got += n;
            if (c->got == ex->reply_len)
                return 1;
            continue;
        }
        if (n == 0)
            return fail("server closed a%s %s connection", what[0] == 'i' ? "n" : "", what);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            continue;
        return fail("recv on %s connection: %s", what, strerror(errno));
    }
}

/* One event on a busy connection: write more, read more.  Returns 1 when
 * its exchange is complete, 0 if not yet, -1 on error. */
static int advance(int ep, conn_t *c, unsigned index, uint32_t events, const char *what)
{
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & EPOLLERR))
            return fail("connect on %s connection: %s", what, strerror(err ? err : ECONNREFUSED));
        return 2; /* connected: the caller starts the hello exchange */
    }
    if ((events & EPOLLOUT) && c->sent < c->ex->request_len && flush(ep, c, index, what) < 0)
        return -1;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        return read_reply(c, what);
    return 0;
}

/*
 * Open conns[lo..hi) and do the hello exchange on each.  Leaves them
 * registered when keep_registered, else unregistered.
 */
static int open_batch(const options_t *opt, const script_t *script, int ep, conn_t *conns,
                      int lo, int hi, const char *what, int keep_registered)
{
    for (int i = lo; i < hi; i++)
        if (start_connect(opt, ep, &conns[i], (unsigned)i) < 0)
            return fail("while opening %s connection #%d", what, i + 1);
    int pending = hi - lo;
    double last_progress = now();
    struct epoll_event evs[MAX_EVENTS];
    while (pending > 0) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            return fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            unsigned idx = evs[k].data.u32;
            conn_t *c = &conns[idx];
            int rc = advance(ep, c, idx, evs[k].events, what);
            if (rc == 2)
                rc = start_exchange(ep, c, idx, &script->hello, what);
            if (rc < 0) {
                char first[400];
                snprintf(first, sizeof first, "%.399s", error_text);
                snprintf(error_text, sizeof error_text, "%s (#%u of %d, %d already open)",
                         first, idx + 1, what[0] == 'i' ? opt->idle : opt->conns, lo);
                return -1;
            }
            if (rc == 1) {
                c->state = DONE;
                pending--;
                if (!keep_registered)
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
            last_progress = now();
        }
        if (now() - last_progress > opt->timeout)
            return fail("no progress for %.0f s while opening %s connections (%d of batch "
                        "pending, %d already open)", opt->timeout, what, pending, lo);
    }
    return 0;
}

static int open_all(const options_t *opt, const script_t *script, int ep, conn_t *conns,
                    int count, const char *what, int keep_registered)
{
    for (int lo = 0; lo < count; lo += opt->batch) {
        int hi = lo + opt->batch < count ? lo + opt->batch : count;
        if (open_batch(opt, script, ep, conns, lo, hi, what, keep_registered) < 0)
            return -1;
    }
    return 0;
}

static void wait_for_go(void)
{
    char buf[64];
    if (fgets(buf, sizeof buf, stdin) == NULL) {
        /* harness gone or stdin closed: carry on, the run is bounded anyway */
    }
}

typedef struct {
    long round_trips;
    long ops;
    double seconds;
    double cpu;
} measured_t;

typedef struct {
    const options_t *opt;
    const script_t *script;
    int ep;
    conn_t *active;
    long issued;       /* ops sent (counted in --ops mode only) */
    int outstanding;   /* connections with an exchange in flight */
} play_t;

/* Send the next exchange of the cycle on connection i, unless --ops is reached. */
static int issue(play_t *p, unsigned i)
{
    conn_t *c = &p->active[i];
    const exchange_t *ex = &p->script->cycle[c->next];
    if (p->opt->ops > 0 && p->issued >= p->opt->ops) {
        c->state = DONE;
        return 0;
    }
    c->next = (c->next + 1) % p->script->length;
    p->issued += ex->ops;
    p->outstanding++;
    return start_exchange(p->ep, c, i, ex, "active");
}

/* Every active connection plays the cycle for warmup + duration (or --ops). */
static int play(play_t *p, measured_t *out)
{
    const options_t *opt = p->opt;
    *out = (measured_t){0, 0, 0, 0};
    if (opt->conns == 0) { /* nothing to measure: only the idle connections */
        emit("start");
        emit("end");
        return 0;
    }
    for (int i = 0; i < opt->conns; i++)
        if (issue(p, (unsigned)i) < 0)
            return -1;
    double t0 = now(), start = 0, last_progress = t0, cpu0 = 0;
    int measuring = 0;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        double t = now();
        if (!measuring && t - t0 >= opt->warmup) {
            emit("start");
            measuring = 1;
            start = now();
            cpu0 = cpu_seconds();
        }
        if (opt->ops > 0 ? p->outstanding == 0 : measuring && t - start >= opt->duration)
            break;
        int n = epoll_wait(p->ep, evs, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR)
            return fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            unsigned idx = evs[k].data.u32;
            conn_t *c = &p->active[idx];
            int done = advance(p->ep, c, idx, evs[k].events, "active");
            if (done < 0)
                return -1;
            if (done == 0)
                continue;
            p->outstanding--;
            if (measuring) {
                out->round_trips++;
                out->ops += c->ex->ops;
            }
            if (issue(p, idx) < 0)
                return -1;
            last_progress = now();
        }
        if (now() - last_progress > opt->timeout)
            return fail("no reply for %.0f s (server stalled?)", opt->timeout);
    }
    out->seconds = now() - start;
    out->cpu = cpu_seconds() - cpu0;
    emit("end");
    return 0;
}

static void print_error(void)
{
    printf("{\"event\": \"result\", \"ok\": false, \"client\": \"c\", \"error\": \"");
    for (const char *p = error_text; *p; p++)
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            putchar(*p);
    printf("\"}\n");
}

int main(int argc, char **argv)
{
    options_t opt;
    parse_options(argc, argv, &opt);
    raise_nofile_limit();
    script_t script = {0};
    conn_t *idle = calloc((size_t)opt.idle + 1, sizeof *idle);
    conn_t *active = calloc((size_t)opt.conns + 1, sizeof *active);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    measured_t m = {0, 0, 0, 0};
    int ok = idle && active && ep >= 0;
    if (!ok)
        fail("out of memory or epoll_create1 failed");
    else if (load_script(opt.script, &script) < 0)
        ok = 0;
    else if (open_all(&opt, &script, ep, idle, opt.idle, "idle", 0) < 0)
        ok = 0;
    else if (open_all(&opt, &script, ep, active, opt.conns, "active", 1) < 0)
        ok = 0;
    if (ok && opt.sync) {
        printf("{\"event\": \"ready\", \"idle\": %d, \"conns\": %d}\n", opt.idle, opt.conns);
        fflush(stdout);
        wait_for_go();
    }
    play_t player = {&opt, &script, ep, active, 0, 0};
    if (ok && play(&player, &m) < 0)
        ok = 0;
    if (ok) {
        double rate = m.seconds > 0 ? m.ops / m.seconds : 0;
        printf("{\"event\": \"result\", \"ok\": true, \"client\": \"c\", \"round_trips\": %ld, "
               "\"ops\": %ld, \"seconds\": %.6f, \"rate\": %.3f, \"cpu_seconds\": %.6f, "
               "\"idle\": %d, \"conns\": %d}\n",
               m.round_trips, m.ops, m.seconds, rate, m.cpu, opt.idle, opt.conns);
    } else {
        print_error();
    }
    fflush(stdout);
    return ok ? 0 : 1;
}
