// A Go program that never asks for its heap profile: the linker turns the
// runtime's heap sampling off (MemProfileRate 0). It keeps 1 MiB every
// INTERVAL for ROUNDS rounds, then exits.
//
//	unsampled ROUNDS INTERVAL
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

var kept [][]byte

//go:noinline
func keep() {
	kept = append(kept, make([]byte, 1<<20))
}

func main() {
	rounds, _ := strconv.Atoi(os.Args[1])
	interval, _ := time.ParseDuration(os.Args[2])
	for i := 0; i < rounds; i++ {
		keep()
		time.Sleep(interval)
	}
	fmt.Println("done", len(kept))
}
