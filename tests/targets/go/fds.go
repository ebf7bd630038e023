// Descriptor leaks in Go: HTTP responses whose body is never closed (each
// request on a fresh Transport keeps its connection's socket open) and files
// opened without Close. Prints "ready" when done, then waits to be traced.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Kept so the garbage collector's finalizers do not close them.
var (
	responses []*http.Response
	files     []*os.File
)

//go:noinline
func fetchWithoutClose(url string) {
	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Get(url)
	if err != nil {
		panic(err)
	}
	responses = append(responses, resp) // resp.Body.Close() forgotten
}

//go:noinline
func openWithoutClose(path string) {
	f, err := os.Open(path)
	if err != nil {
		panic(err)
	}
	files = append(files, f)
}

func main() {
	dir := os.Args[1]
	delay, _ := time.ParseDuration(os.Args[2])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	}))
	path := filepath.Join(dir, "data.txt")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		panic(err)
	}
	time.Sleep(delay)
	url := "http://" + l.Addr().String() + "/"
	for i := 0; i < 6; i++ {
		fetchWithoutClose(url)
	}
	for i := 0; i < 4; i++ {
		openWithoutClose(path)
	}
	fmt.Println("ready", l.Addr().String())
	time.Sleep(time.Hour)
}
