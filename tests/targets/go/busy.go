// busy: one `go` statement, reached from two callers, making goroutines far
// faster than leaktrace announces each with its stack (1,000 a second per
// CPU; past that one in 64). Those made through leakOne block forever; those
// made through quickOne end at once.
//
//	busy ROUNDS  each round makes 9 quick goroutines and 1 that blocks;
//	             then it prints "made N leaked M" and exits a second later
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

var never = make(chan struct{})

//go:noinline
func spawn(f func()) {
	go f() // the statement
}

//go:noinline
func quickOne(wg *sync.WaitGroup) {
	spawn(wg.Done)
}

//go:noinline
func leakOne() {
	spawn(func() { <-never })
}

func main() {
	rounds, err := strconv.Atoi(os.Args[1])
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < rounds; i++ {
		for j := 0; j < 9; j++ {
			wg.Add(1)
			quickOne(&wg)
		}
		leakOne()
		wg.Wait()
	}
	fmt.Printf("made %d leaked %d\n", rounds*10, rounds)
	time.Sleep(time.Second)
}
