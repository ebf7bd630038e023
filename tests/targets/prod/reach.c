/* Heap blocks in every reachability class, for leaktrace's scan and
 * LeakSanitizer (the same source built with -fsanitize=leak) to classify
 * alike. Each kind of block comes from its own function.
 *   reach leaks [CODE]   every class below, then exit(CODE) (default 0)
 *   reach clean [CODE]   only reachable blocks, then exit(CODE)
 *   reach hold SECONDS   every class below, then sleeps SECONDS and exits
 *   reach big MIB        MIB MiB of 4 KiB blocks for the benchmark: each holds a
 *                        pointer to the block before it every 64 bytes, the
 *                        newest is held by a global; then half of the chain
 *                        is cut loose and it exits
 *   reach churn SECONDS  keeps moving, replacing and freeing blocks that stay
 *                        reachable, for SECONDS, then exits
 * Classes:
 *   lost_block      unreachable: its last pointer overwritten (5)
 *   list_node       a list whose head is dropped: 1 unreachable, 3 indirect
 *   cycle_node      two blocks pointing to each other only: 2 indirect
 *   cached_block    reachable: a global array holds them (4)
 *   interior_block  reachable: a global points inside it (1)
 *   tls_block       reachable: only in thread-local storage (2: main, thread)
 *   stack_block     reachable: only on a blocked thread's stack (1) */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

struct node {
    struct node *next;
    char payload[40];
};

void *cache[4];
char *interior;
__thread void *tls_held;
void *volatile sink;

NOINLINE void *lost_block(size_t n) {
    void *p = malloc(n);
    memset(p, 1, n);
    return p;
}

NOINLINE struct node *list_node(struct node *next) {
    struct node *n = malloc(sizeof *n);
    memset(n->payload, 2, sizeof n->payload);
    n->next = next;
    return n;
}

NOINLINE struct node *cycle_node(struct node *next) {
    struct node *n = malloc(sizeof *n);
    memset(n->payload, 3, sizeof n->payload);
    n->next = next;
    return n;
}

NOINLINE void *cached_block(size_t n) {
    void *p = malloc(n);
    memset(p, 4, n);
    return p;
}

NOINLINE char *interior_block(void) {
    char *p = malloc(64);
    memset(p, 5, 64);
    return p + 40;
}

NOINLINE void *tls_block(void) {
    void *p = malloc(48);
    memset(p, 6, 48);
    return p;
}

NOINLINE void *stack_block(void) {
    void *p = malloc(56);
    memset(p, 7, 56);
    return p;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static int started;

static void *holder(void *arg) {
    (void)arg;
    void *volatile on_stack = stack_block();
    tls_held = tls_block();
    pthread_mutex_lock(&lock);
    started = 1;
    pthread_cond_signal(&ready);
    pthread_mutex_unlock(&lock);
    for (;;)
        pause();
    return on_stack;
}

static void reachable(void) {
    for (int i = 0; i < 4; i++)
        cache[i] = cached_block(32);
    interior = interior_block();
    tls_held = tls_block();
    pthread_t t;
    pthread_create(&t, NULL, holder, NULL);
    pthread_mutex_lock(&lock);
    while (!started)
        pthread_cond_wait(&ready, &lock);
    pthread_mutex_unlock(&lock);
}

NOINLINE static void lost(void) {
    for (int i = 0; i < 5; i++)
        sink = lost_block(24);
    struct node *head = NULL;
    for (int i = 0; i < 4; i++)
        head = list_node(head);
    sink = head;
    struct node *a = cycle_node(NULL);
    a->next = cycle_node(a);
    sink = a;
    sink = NULL;
}

/* Zeroes the stack below the caller, where lost()'s frame was: no stale
 * copy of a pointer it dropped stays for a scan to find. */
NOINLINE static void scrub(void) {
    char pad[8192];
    explicit_bzero(pad, sizeof pad);
}

/* Pointers moved between globals and heap arrays, arrays reallocated,
 * blocks replaced and freed: every block stays reachable throughout. */
#define SLOTS 512
void *left[SLOTS], *right[SLOTS];
void **held; /* a heap array of pointers, reallocated as it grows and shrinks */
size_t nheld;

static void churn(int seconds) {
    for (int i = 0; i < SLOTS; i++)
        left[i] = cached_block(16 + i % 64);
    time_t end = time(NULL) + seconds;
    unsigned r = 1;
    while (time(NULL) < end) {
        for (int k = 0; k < 1000; k++) {
            r = r * 1103515245 + 12345;
            int i = r % SLOTS;
            switch (r >> 16 & 3) {
            case 0: /* left → right */
                if (left[i] && !right[i]) {
                    right[i] = left[i];
                    left[i] = NULL;
                }
                break;
            case 1: /* right → left */
                if (right[i] && !left[i]) {
                    left[i] = right[i];
                    right[i] = NULL;
                }
                break;
            case 2: { /* into the heap array, which may move */
                void **slot = left[i] ? &left[i] : &right[i];
                if (*slot) {
                    held = realloc(held, (nheld + 1) * sizeof *held);
                    held[nheld++] = *slot;
                    *slot = NULL;
                }
                break;
            }
            case 3: /* out of the heap array; or replaced */
                if (nheld && !left[i]) {
                    left[i] = held[--nheld];
                    held = realloc(held, (nheld + 1) * sizeof *held);
                } else if (left[i]) {
                    free(left[i]);
                    left[i] = cached_block(16 + i % 64);
                }
                break;
            }
        }
        usleep(1000);
    }
}

void *newest;

static void big(long mib) {
    long n = mib * 256;
    void **middle = NULL;
    for (long i = 0; i < n; i++) {
        void **b = malloc(4096);
        for (int w = 0; w < 512; w++)
            b[w] = w % 8 == 0 ? newest : (void *)(long)w;
        newest = b;
        if (i == n / 2)
            middle = b;
    }
    if (middle)
        for (int w = 0; w < 512; w += 8)
            middle[w] = NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "leaks";
    if (!strcmp(mode, "big")) {
        big(argc > 2 ? atol(argv[2]) : 1024);
        return 0;
    }
    if (!strcmp(mode, "churn")) {
        churn(argc > 2 ? atoi(argv[2]) : 10);
        return 0;
    }
    int code = argc > 2 ? atoi(argv[2]) : 0;
    reachable();
    if (strcmp(mode, "clean"))
        lost();
    scrub();
    if (!strcmp(mode, "hold")) {
        sleep(code);
        return 0;
    }
    return code;
}
