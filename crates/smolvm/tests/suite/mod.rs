mod argv;
