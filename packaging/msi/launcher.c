/* zlayer.exe: the Windows launcher the MSI installs. Runs "<Python 3.11>\python.exe -m zlayer ARGS" with the
 * install folder's lib\ on PYTHONPATH and exits with its status. Python's folder is read from
 * HKLM\SOFTWARE\Python\PythonCore\3.11\InstallPath (the installer's LaunchCondition requires it). */
#include <windows.h>
#include <wchar.h>

static int fail(const wchar_t *what) {
    fwprintf(stderr, L"zlayer: %ls (error %lu)\n", what, GetLastError());
    return 127;
}

int wmain(void) {
    wchar_t python[MAX_PATH + 16], self[MAX_PATH], lib[MAX_PATH + 8];
    DWORD size = sizeof(python) - 16 * sizeof(wchar_t);
    if (RegGetValueW(HKEY_LOCAL_MACHINE, L"SOFTWARE\\Python\\PythonCore\\3.11\\InstallPath", NULL, RRF_RT_REG_SZ,
                     NULL, python, &size) != ERROR_SUCCESS)
        return fail(L"Python 3.11 is not installed (HKLM\\SOFTWARE\\Python\\PythonCore\\3.11\\InstallPath)");
    size_t n = wcslen(python);
    if (n && python[n - 1] != L'\\') wcscat(python, L"\\");
    wcscat(python, L"python.exe");

    DWORD len = GetModuleFileNameW(NULL, self, MAX_PATH);
    if (!len || len >= MAX_PATH) return fail(L"cannot find zlayer.exe's own folder");
    wchar_t *slash = wcsrchr(self, L'\\');
    if (slash) slash[1] = 0;
    _snwprintf(lib, MAX_PATH + 8, L"%lslib", self);
    lib[MAX_PATH + 7] = 0;
    if (!SetEnvironmentVariableW(L"PYTHONPATH", lib)) return fail(L"cannot set PYTHONPATH");

    /* the arguments after our own program name, as the caller quoted them */
    const wchar_t *args = GetCommandLineW();
    int quoted = 0;
    while (*args && (quoted || (*args != L' ' && *args != L'\t'))) {
        if (*args == L'"') quoted = !quoted;
        args++;
    }
    size_t cap = wcslen(python) + wcslen(args) + 32;
    wchar_t *line = HeapAlloc(GetProcessHeap(), 0, cap * sizeof(wchar_t));
    if (!line) return fail(L"out of memory");
    _snwprintf(line, cap, L"\"%ls\" -m zlayer%ls", python, args);
    line[cap - 1] = 0;

    STARTUPINFOW si = {.cb = sizeof(si)};
    PROCESS_INFORMATION pi;
    if (!CreateProcessW(python, line, NULL, NULL, TRUE, 0, NULL, NULL, &si, &pi))
        return fail(L"cannot start python.exe");
    WaitForSingleObject(pi.hProcess, INFINITE);
    DWORD status = 1;
    GetExitCodeProcess(pi.hProcess, &status);
    CloseHandle(pi.hThread);
    CloseHandle(pi.hProcess);
    return (int)status;
}
