// Command fakeworker stands in for bin/worker in the local cluster's own
// tests: it serves /readyz on $MLA_POD_IP:$MLA_PORT, writes what it was
// started with to /env, exits with $FAKE_EXIT_CODE after $FAKE_EXIT_AFTER,
// and on SIGTERM exits 0 after $FAKE_DRAIN (or never, if "forever").
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	addr := net.JoinHostPort(os.Getenv("MLA_POD_IP"), os.Getenv("MLA_PORT"))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/env", func(w http.ResponseWriter, _ *http.Request) {
		env := map[string]string{}
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"env": env, "args": os.Args[1:]})
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()

	if d, err := time.ParseDuration(os.Getenv("FAKE_EXIT_AFTER")); err == nil {
		time.Sleep(d)
		code, _ := strconv.Atoi(os.Getenv("FAKE_EXIT_CODE"))
		fmt.Fprintf(os.Stderr, "fakeworker: exiting with %d as told\n", code)
		os.Exit(code)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	if os.Getenv("FAKE_DRAIN") == "forever" {
		select {}
	}
	if d, err := time.ParseDuration(os.Getenv("FAKE_DRAIN")); err == nil {
		time.Sleep(d)
	}
	_ = srv.Shutdown(context.Background())
}
