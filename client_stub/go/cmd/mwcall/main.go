// Command mwcall calls a modelwire worker with the generated Go stubs.
//
//	mwcall [-addr HOST:PORT] [-timeout 60s] models
//	mwcall [-addr HOST:PORT] [-model M] [-temperature T] [-max-new-tokens N] generate PROMPT
//	mwcall [-addr HOST:PORT] [-model M] [-temperature T] [-max-new-tokens N] stream PROMPT
//	mwcall [-addr HOST:PORT] [-model M] count PROMPT
//
// The address defaults to $MODELWIRE_ADDR, else 127.0.0.1:50051. A failed call prints its gRPC
// status code and message (and any google.rpc.BadRequest field violations) and exits with 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("mwcall", flag.ContinueOnError)
	flags.SetOutput(stderr)
	defaultAddr := os.Getenv("MODELWIRE_ADDR")
	if defaultAddr == "" {
		defaultAddr = "127.0.0.1:50051"
	}
	addr := flags.String("addr", defaultAddr, "worker address (default $MODELWIRE_ADDR)")
	timeout := flags.Duration("timeout", 60*time.Second, "deadline of the call")
	model := flags.String("model", "gemma-3-270m", "model name")
	temperature := flags.Float64("temperature", -1, "sampling temperature (unset when negative)")
	maxNewTokens := flags.Int("max-new-tokens", 0, "upper bound on generated tokens (unset when 0)")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: mwcall [flags] models | generate PROMPT | stream PROMPT | count PROMPT")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() < 1 {
		flags.Usage()
		return 2
	}
	command, prompt := flags.Arg(0), strings.Join(flags.Args()[1:], " ")
	if command != "models" && prompt == "" {
		fmt.Fprintf(stderr, "mwcall: %s needs a PROMPT\n", command)
		return 2
	}

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "mwcall: %v\n", err)
		return 1
	}
	defer conn.Close()
	client := modelwirev1.NewModelWorkerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	request := &modelwirev1.ModelRequest{
		Model:    *model,
		Messages: []*modelwirev1.ModelMessage{{Role: modelwirev1.Role_ROLE_USER, Content: prompt}},
		Sampling: &modelwirev1.SamplingParams{},
	}
	if *temperature >= 0 {
		t := float32(*temperature)
		request.Sampling.Temperature = &t
	}
	if *maxNewTokens > 0 {
		n := int32(*maxNewTokens)
		request.Sampling.MaxNewTokens = &n
	}

	switch command {
	case "models":
		err = listModels(ctx, client, stdout)
	case "generate":
		err = generate(ctx, client, request, stdout)
	case "stream":
		err = stream(ctx, client, request, stdout)
	case "count":
		err = count(ctx, client, *model, prompt, stdout)
	default:
		flags.Usage()
		return 2
	}
	if err != nil {
		report(stderr, err)
		return 1
	}
	return 0
}

func listModels(ctx context.Context, client modelwirev1.ModelWorkerClient, out io.Writer) error {
	response, err := client.ListModels(ctx, &modelwirev1.ListModelsRequest{})
	if err != nil {
		return err
	}
	for _, m := range response.GetModels() {
		fmt.Fprintf(out, "%s\t%s\tcontext=%d\tmax_output=%d\n",
			m.GetModel(), m.GetProvider(), m.GetContextLength(), m.GetMaxOutputTokens())
	}
	return nil
}

func generate(ctx context.Context, client modelwirev1.ModelWorkerClient, request *modelwirev1.ModelRequest, out io.Writer) error {
	output, err := client.Generate(ctx, request)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, output.GetText())
	printSummary(out, output)
	return nil
}

func stream(ctx context.Context, client modelwirev1.ModelWorkerClient, request *modelwirev1.ModelRequest, out io.Writer) error {
	responses, err := client.GenerateStream(ctx, request)
	if err != nil {
		return err
	}
	var last *modelwirev1.ModelOutput
	for {
		chunk, err := responses.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		fmt.Fprint(out, chunk.GetText())
		last = chunk
	}
	fmt.Fprintln(out)
	if last != nil {
		printSummary(out, last)
	}
	return nil
}

func count(ctx context.Context, client modelwirev1.ModelWorkerClient, model, prompt string, out io.Writer) error {
	response, err := client.CountToken(ctx, &modelwirev1.CountTokenRequest{Model: model, Prompt: prompt})
	if err != nil {
		return err
	}
	exact := "estimate"
	if response.GetExact() {
		exact = "exact"
	}
	fmt.Fprintf(out, "%d\t%s\t%s\n", response.GetCount(), response.GetTokenizer(), exact)
	return nil
}

func printSummary(out io.Writer, output *modelwirev1.ModelOutput) {
	usage := output.GetUsage()
	fmt.Fprintf(out, "-- %s finish_reason=%s prompt_tokens=%d completion_tokens=%d\n",
		output.GetModel(), output.GetFinishReason(), usage.GetPromptTokens(), usage.GetCompletionTokens())
}

func report(out io.Writer, err error) {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(out, "mwcall: %v\n", err)
		return
	}
	fmt.Fprintf(out, "mwcall: %s: %s\n", st.Code(), st.Message())
	for _, detail := range st.Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range badRequest.GetFieldViolations() {
				fmt.Fprintf(out, "  %s: %s\n", violation.GetField(), violation.GetDescription())
			}
		}
	}
}
