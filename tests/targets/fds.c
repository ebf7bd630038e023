/* Descriptor leaks with known counts, and distractors that close what they open.
 *   fds DIR PORT DELAY_MS LINGER_MS   leaks after DELAY_MS, then waits LINGER_MS
 *   fds DIR exec                      close-on-exec across an exec of itself
 *   fds DIR fork                      a forked child that leaks
 * DIR is an existing directory for the files; PORT a listener the test runs. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_to(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(1); }
    return s;
}

FILE *files[16];
__attribute__((noinline)) void leak_fopen(int i) { files[i] = fopen("fopen.txt", "w"); }
__attribute__((noinline)) void leak_open(void) { open("open.txt", O_CREAT | O_WRONLY, 0644); }
__attribute__((noinline)) void leak_openat(int dir) { openat(dir, "openat.txt", O_CREAT | O_RDONLY, 0644); }
__attribute__((noinline)) void leak_connect(int port) { connect_to(port); }
__attribute__((noinline)) int make_listener(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 16);
    return l;
}
__attribute__((noinline)) void leak_accept(int l) { accept(l, NULL, NULL); }
__attribute__((noinline)) void leak_pipe(void) { int p[2]; pipe(p); }
__attribute__((noinline)) void leak_dup(int fd) { dup(fd); }
__attribute__((noinline)) void leak_eventfd(void) { eventfd(0, EFD_CLOEXEC); }

/* Distractors: everything closed. */
__attribute__((noinline)) void open_close(void) { close(open("tmp.txt", O_CREAT | O_RDONLY, 0644)); }
__attribute__((noinline)) void pipe_close(void) { int p[2]; pipe(p); close(p[0]); close(p[1]); }
__attribute__((noinline)) void socket_close(void) { close(socket(AF_INET, SOCK_DGRAM, 0)); }
__attribute__((noinline)) void open_for_range(void) {
    for (int i = 0; i < 5; i++) open("range.txt", O_CREAT | O_RDONLY, 0644);
}
__attribute__((noinline)) void dup2_over(int fd) {
    /* dup2 onto an open descriptor closes it first. */
    int victim = open("victim.txt", O_CREAT | O_RDONLY, 0644);
    dup2(fd, victim);
    close(victim);
}

static int leaks(int port) {
    int dir = open(".", O_RDONLY | O_DIRECTORY);  /* one fd: site main */
    for (int i = 0; i < 3; i++) leak_fopen(i);
    for (int i = 0; i < 4; i++) leak_open();
    for (int i = 0; i < 2; i++) leak_openat(dir);
    for (int i = 0; i < 5; i++) leak_connect(port);
    int l = make_listener();
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &len);
    for (int i = 0; i < 3; i++) {
        close(connect_to(ntohs(a.sin_port)));  /* the accepted end stays open */
        leak_accept(l);
    }
    for (int i = 0; i < 2; i++) leak_pipe();
    for (int i = 0; i < 2; i++) leak_dup(dir);
    leak_eventfd();
    for (int i = 0; i < 10; i++) { open_close(); pipe_close(); socket_close(); }
    int first = open("range.txt", O_CREAT | O_RDONLY, 0644);
    close(first);
    open_for_range();
    close_range(first, first + 4, 0);
    dup2_over(dir);
    return 0;
}

__attribute__((noinline)) void open_kept(void) { open("kept.txt", O_CREAT | O_RDONLY, 0644); }
__attribute__((noinline)) void open_cloexec(void) { open("gone.txt", O_CREAT | O_RDONLY | O_CLOEXEC, 0644); }

__attribute__((noinline)) void open_in_child(void) { open("child.txt", O_CREAT | O_RDONLY, 0644); }

/* A child that inherits one descriptor and leaks two of its own. */
static int forked(void) {
    usleep(300 * 1000);
    open_kept();
    pid_t child = fork();
    if (child == 0) {
        open_in_child();
        open_in_child();
        usleep(2000 * 1000);
        _exit(0);
    }
    usleep(2500 * 1000);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || chdir(argv[1]) != 0) { fprintf(stderr, "usage: fds DIR PORT DELAY LINGER | fds DIR exec\n"); return 2; }
    if (strcmp(argv[2], "exec") == 0) {
        usleep(300 * 1000); /* long enough for leaktrace to read this image's maps */
        open_kept();
        open_cloexec();
        execl("/proc/self/exe", "fds", ".", "after-exec", (char *)NULL);
        return 1;
    }
    if (strcmp(argv[2], "fork") == 0) return forked();
    if (strcmp(argv[2], "after-exec") == 0) { usleep(3000 * 1000); return 0; }
    int before = open("before.txt", O_CREAT | O_RDONLY, 0644);  /* open at attach */
    (void)before;
    usleep(atoi(argv[3]) * 1000);
    leaks(atoi(argv[2]));
    printf("leaked\n");
    fflush(stdout);
    usleep(atoi(argv[4]) * 1000);
    return 0;
}
