/* The sandbox ("pause") image of the test nodes: holds a Pod's namespaces
 * until it is told to stop, reaping whatever is re-parented to it. No
 * registry is reachable, so it is built here rather than pulled. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

static void quit(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGCHLD, reap);
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    for (;;) {
        pause();
    }
}
