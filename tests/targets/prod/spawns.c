/* New processes and images that leak at once and end: what wrappers, test
 * runners and pre-fork servers make.
 *
 *   spawns leak          leaks 64 blocks of 1000+i bytes (quick_leak) and 16
 *                        strdup'd names (dup_name, through the C library),
 *                        exits
 *   spawns fork N        forks N children that each leak 8 blocks of 3000 B
 *                        (child_leak) and _exit at once; waits for them
 *   spawns exec PROG...  leaks 32 blocks of 5000 B (leak_before_exec), then
 *                        execs PROG: that heap goes with the old image
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *kept[128];

__attribute__((noinline)) static void *quick_leak(int i) {
    char *p = malloc(1000 + i);
    memset(p, 1, 16);
    return p;
}

__attribute__((noinline)) static char *dup_name(int i) {
    char name[32];
    snprintf(name, sizeof name, "worker-%d", i);
    return strdup(name);
}

__attribute__((noinline)) static void *child_leak(void) {
    char *p = malloc(3000);
    memset(p, 2, 16);
    return p;
}

__attribute__((noinline)) static void *leak_before_exec(void) {
    char *p = malloc(5000);
    memset(p, 3, 16);
    return p;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "leak") == 0) {
        for (int i = 0; i < 64; i++) kept[i] = quick_leak(i);
        for (int i = 0; i < 16; i++) kept[64 + i] = dup_name(i);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "fork") == 0) {
        int n = atoi(argv[2]);
        for (int c = 0; c < n; c++) {
            pid_t pid = fork();
            if (pid == 0) {
                for (int i = 0; i < 8; i++) kept[i] = child_leak();
                _exit(0);
            }
        }
        while (wait(NULL) > 0) {
        }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "exec") == 0) {
        for (int i = 0; i < 32; i++) kept[i] = leak_before_exec();
        execv(argv[2], argv + 2);
        return 127;
    }
    fprintf(stderr, "usage: spawns leak | fork N | exec PROG [ARGS]\n");
    return 2;
}
