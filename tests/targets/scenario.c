/* Verdict scenarios: true leaks mixed with memory that looks like one but is not.
 * Ten ticks a second for argv[1] seconds (default 60); with argv[2], first
 * writes its PID there (a cgroup.procs file: the test's memory limit). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define TICK_US 100000

/* --- true leaks ------------------------------------------------------------ */

/* 4 KiB per tick kept forever: 40 KiB/s. */
__attribute__((noinline)) void leak_forever(void) {
    char *p = malloc(4096);
    memset(p, 1, 4096);
}

/* One buffer realloc'ed 1 KiB bigger every tick and never shrunk. */
static char *grown;
static size_t grown_len;
__attribute__((noinline)) void grow_buffer(void) {
    grown_len += 1024;
    grown = realloc(grown, grown_len);
    memset(grown, 2, grown_len);
}

/* A 64 KiB mapping every second, never unmapped. */
__attribute__((noinline)) void map_forever(void) {
    void *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(p, 3, 65536);
}

/* Descriptors: a pipe every second and a socket pair every half second, never closed. */
__attribute__((noinline)) void leak_pipe(void) { int p[2]; pipe(p); }
__attribute__((noinline)) void leak_socketpair(void) { int s[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, s); }

/* --- distractors ----------------------------------------------------------- */

/* Descriptors opened for a moment, and a fixed set kept for the process's life. */
__attribute__((noinline)) void open_close(void) { close(open("/dev/null", O_RDONLY)); }
__attribute__((noinline)) void open_fixed(void) {
    for (int i = 0; i < 8; i++) open("/dev/null", O_RDONLY);
}

/* A bounded LRU of 16 entries: full after 1.6 s, then each put evicts the oldest. */
#define LRU_SLOTS 16
static char *lru[LRU_SLOTS];
static size_t lru_next;
__attribute__((noinline)) void lru_put(void) {
    size_t slot = lru_next++ % LRU_SLOTS;
    free(lru[slot]);
    lru[slot] = malloc(2048);
    memset(lru[slot], 4, 2048);
}

/* A fixed pool made at start and kept for the process's life. */
static char *pool[64];
__attribute__((noinline)) void pool_init(void) {
    for (int i = 0; i < 64; i++) {
        pool[i] = malloc(8192);
        memset(pool[i], 5, 8192);
    }
}

/* Request buffers freed 2 s (20 ticks) after they were allocated. */
#define DELAY_TICKS 20
static char *delayed[DELAY_TICKS];
static size_t delayed_next;
__attribute__((noinline)) void delayed_free_put(void) {
    size_t slot = delayed_next++ % DELAY_TICKS;
    free(delayed[slot]);
    delayed[slot] = malloc(16384);
    memset(delayed[slot], 6, 16384);
}

/* Temporary garbage, freed at once. */
__attribute__((noinline)) void garbage(void) {
    for (int i = 0; i < 10; i++) {
        char *p = malloc(512);
        memset(p, 7, 512);
        free(p);
    }
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 60;
    if (argc > 2) {
        FILE *procs = fopen(argv[2], "w");
        if (!procs || fprintf(procs, "%d\n", getpid()) < 0 || fclose(procs) != 0) {
            perror(argv[2]);
            return 1;
        }
    }
    pool_init();
    open_fixed();
    for (int tick = 0; tick < seconds * 10; tick++) {
        if (tick % 10 == 0) leak_pipe();
        if (tick % 5 == 0) leak_socketpair();
        open_close();
        leak_forever();
        grow_buffer();
        if (tick % 10 == 0) map_forever();
        lru_put();
        delayed_free_put();
        garbage();
        usleep(TICK_US);
    }
    return 0;
}
