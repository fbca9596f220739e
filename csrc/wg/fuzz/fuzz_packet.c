/* libFuzzer target of the WireGuard data path's parsers: what a peer, an attacker on the path or the TUN hands the
 * device. The first input byte picks the entry:
 *   0: the rest is a raw UDP datagram (type, lengths, index, counter, tag: any bytes an attacker can send);
 *   1: the rest is a plaintext that a peer with a valid session sends, encrypted here under that session with the
 *      next two bytes as the counter (inner IP parsing, allowed IPs, the replay window, TCP coalescing on write);
 *   2: the rest is one TUN read with its virtio-net header (TSO segmentation, checksums, routing, encryption,
 *      GSO batching, staging for a peer with no session).
 * The device has one peer with a session (allowed 10.0.0.0/8, fd00::/8) and one without (192.168.0.0/16); the TUN is
 * /dev/null and datagrams go to the discard port on loopback. Runs single-threaded: no workers are started.
 * Build: clang -g -fsanitize=fuzzer,address -Iinclude -Icsrc/wg (every csrc/wg .c file) fuzz_packet.c -lcrypto
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wg_int.h"

static wg_dev_t *dev;
static const uint8_t send_key[32] = {1, 2, 3}; /* ours to the peer */
static const uint8_t recv_key[32] = {4, 5, 6}; /* the peer's to us */

static void setup(void)
{
    char err[256];
    wg_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.mtu = 1420;
    cfg.offload = 1;
    int tun = open("/dev/null", O_WRONLY);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET};
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (tun < 0 || udp < 0 || bind(udp, (struct sockaddr *)&lo, sizeof(lo)) != 0)
        abort();
    if (wg_create_on(&cfg, tun, 1, udp, &dev, err, sizeof(err)) != 0)
        abort();
    struct sockaddr_in discard = lo;
    discard.sin_port = htons(9);
    wg_allowed_ip_t ips[3] = {
        {.family = 4, .addr = {10}, .cidr = 8, .peer = 0},
        {.family = 6, .addr = {0xfd}, .cidr = 8, .peer = 0},
        {.family = 4, .addr = {192, 168}, .cidr = 16, .peer = 1},
    };
    for (int p = 0; p < 2; p++) {
        wg_peer_add(dev, p);
        wg_peer_set_endpoint(dev, p, &discard, sizeof(discard));
    }
    if (wg_set_allowed_ips(dev, ips, 3, err, sizeof(err)) != 0)
        abort();
    /* an initiator's session is current at once */
    if (wg_peer_install_session(dev, 0, 1, 2, send_key, recv_key, 1, wg_now()) < 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dev)
        setup();
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 3;
    data++;
    size--;
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = htons(4242)};
    from.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint8_t *buf;
    if (mode == 1) {
        if (size < 2 || size > 65000)
            return 0;
        uint64_t counter = (uint64_t)data[0] | (uint64_t)data[1] << 8;
        size_t plen = size - 2, len = WG_HDR_DATA + plen + WG_TAG;
        buf = malloc(len);
        if (!buf)
            return 0;
        memset(buf, 0, WG_HDR_DATA);
        buf[0] = WG_MSG_DATA;
        buf[4] = 1; /* our local index */
        buf[8] = data[0];
        buf[9] = data[1];
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
        if (!ctx || wg_seal(ctx, recv_key, counter, data + 2, plen, buf + WG_HDR_DATA) != 0)
            abort();
        EVP_CIPHER_CTX_free(ctx);
        wg_rx_datagram(dev, buf, len, &from, sizeof(from));
    } else {
        buf = malloc(size ? size : 1);
        if (!buf)
            return 0;
        memcpy(buf, data, size);
        if (mode == 0)
            wg_rx_datagram(dev, buf, size, &from, sizeof(from));
        else
            wg_tx_tun_read(dev, buf, size);
    }
    wg_flush(dev);
    free(buf);
    /* Python's side: drain the handshake queue so that it never stays full */
    wg_hs_msg_t msgs[8];
    while (wg_wait(dev, 0, msgs, 8) == 8)
        ;
    return 0;
}
