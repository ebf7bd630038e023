/* An allocator loaded after the program started, as a plugin would bring one:
 *   late_alloc LIBRARY ROUNDS
 * dlopen()s LIBRARY (mimalloc) once running, waits half a second, then each
 * round keeps one KEEP-byte block from its mi_malloc (keep_late: the leak) and
 * gives one back through mi_free (churn_late). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
#define KEEP 700
#define MAX_ROUNDS 4096

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static void *kept[MAX_ROUNDS];

NOINLINE void *keep_late(int round) {
    char *p = lib_malloc(KEEP);
    p[0] = (char)round;
    return p;
}

NOINLINE int churn_late(int round) {
    char *p = lib_malloc(KEEP);
    __asm__ volatile("" : : "r"(p) : "memory");
    p[0] = (char)round;
    int v = p[0];
    lib_free(p);
    return v;
}

int main(int argc, char **argv) {
    int rounds = argc > 2 ? atoi(argv[2]) : 0;
    if (rounds <= 0 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: late_alloc LIBRARY ROUNDS (1 to %d)\n", MAX_ROUNDS);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    lib_malloc = (void *(*)(size_t))dlsym(lib, "mi_malloc");
    lib_free = (void (*)(void *))dlsym(lib, "mi_free");
    if (!lib_malloc || !lib_free) {
        fprintf(stderr, "no mi_malloc/mi_free in %s\n", argv[1]);
        return 1;
    }
    usleep(500 * 1000);
    int sum = 0;
    for (int i = 0; i < rounds; i++) {
        kept[i] = keep_late(i);
        sum += churn_late(i);
    }
    printf("done %d\n", sum);
    return 0;
}
