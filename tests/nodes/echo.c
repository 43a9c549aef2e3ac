/* The backend image of the node tests: on TCP and UDP port 8080 it says who
 * it is and whom it sees ("pod NAME from ADDRESS:PORT"), then echoes what it
 * receives. A PROXY header a forwarder prepends is echoed with the rest, so
 * the client reads the address its forwarder reported. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int bound(int type) {
    int fd = socket(AF_INET, type, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("bind 8080");
        _exit(1);
    }
    return fd;
}

static int hello(char *out, size_t size, const char *pod, struct sockaddr_in *peer) {
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof ip);
    return snprintf(out, size, "pod %s from %s:%u\n", pod, ip, ntohs(peer->sin_port));
}

static void serve(int conn, const char *pod, struct sockaddr_in *peer) {
    char buf[65536];
    ssize_t n = hello(buf, sizeof buf, pod, peer);
    if (write(conn, buf, n) != n) {
        _exit(0);
    }
    while ((n = read(conn, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0, w; done < n; done += w) {
            if ((w = write(conn, buf + done, n - done)) <= 0) {
                _exit(0);
            }
        }
    }
    _exit(0);
}

int main(void) {
    char pod[256] = "unknown", buf[65536];
    gethostname(pod, sizeof pod - 1);
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int tcp = bound(SOCK_STREAM), udp = bound(SOCK_DGRAM);
    listen(tcp, 1024);
    printf("pod %s listening on 8080 (TCP and UDP)\n", pod);
    fflush(stdout);
    struct pollfd fds[2] = {{.fd = tcp, .events = POLLIN}, {.fd = udp, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            continue;
        }
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        if (fds[0].revents & POLLIN) {
            int conn = accept(tcp, (struct sockaddr *)&peer, &len);
            if (conn >= 0 && fork() == 0) {
                close(tcp);
                close(udp);
                serve(conn, pod, &peer);
            }
            if (conn >= 0) {
                close(conn);
            }
        }
        len = sizeof peer;
        if (fds[1].revents & POLLIN) {
            ssize_t n = recvfrom(udp, buf, sizeof buf / 2, 0, (struct sockaddr *)&peer, &len);
            if (n >= 0) {
                char out[sizeof buf];
                int h = hello(out, sizeof out, pod, &peer);
                memcpy(out + h, buf, n);
                sendto(udp, out, h + n, 0, (struct sockaddr *)&peer, len);
            }
        }
    }
}
